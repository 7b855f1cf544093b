"""What a vLLM engine can serve and reserves, stated once: the config, the planner and the engine read these.

Importing this module imports nothing of vLLM: the planner runs before any engine exists.
"""

from __future__ import annotations

# The LoRA ranks vLLM serves (``max_lora_rank``): an adapter of rank r needs the first one >= r.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
MAX_LORA_RANK = LORA_RANKS[-1]
# vLLM's default share of a GPU's memory an engine may take (``gpu_memory_utilization``).
GPU_MEMORY_SHARE = 0.9
# Tokens one scheduler step may batch (``max_num_batched_tokens``; on CPU at least the context length) and
# sequences at once (``max_num_seqs``): the profiling run's activations and the sampler's logits are sized by them.
BATCHED_TOKENS, MAX_SEQS = 8192, 256
# What an engine reserves beyond weights, LoRA slots, KV cache and activations: CUDA context and graphs (allowance).
FIXED_GIB = 1.5


def lora_slot_rank(rank: int) -> int:
    """The ``max_lora_rank`` an engine needs for adapters of ``rank``; ValueError above ``MAX_LORA_RANK``."""
    for k in LORA_RANKS:
        if k >= rank:
            return k
    raise ValueError(f"LoRA rank {rank} is above the largest vLLM serves ({MAX_LORA_RANK})")
