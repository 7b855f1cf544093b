"""DPO training: the trainer, losses, packed log-probs, canaries, GPU placement of train ranks."""
