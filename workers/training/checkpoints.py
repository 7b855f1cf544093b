"""Ray Train checkpoints of a training stage: saved every ``checkpoint_every`` steps, and the one to resume from.

What a checkpoint holds (weights, optimizer, scheduler, RNG, position) is written and read by
``DPOTrainerCore.save_checkpoint`` / ``load_checkpoint``; this module only hands it to Ray Train and back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workers import faults
from workers.progress import Report

if TYPE_CHECKING:
    from workers.training.trainer import DPOTrainerCore, TrainState


class Checkpoints:
    """Ray Train checkpoints of a training stage: every ``every`` steps, and the one to resume from.

    ``save`` is called by every rank (``ray.train.report`` is a barrier);
    rank 0 writes the checkpoint, and the call returns once Ray Train has
    committed it, so a driver that dies after seeing the step loses nothing.
    """

    def __init__(self, every: int, rank: int, on_saved: Report | None = None) -> None:
        self.every, self.rank, self.on_saved = every, rank, on_saved

    def load(self, core: DPOTrainerCore) -> tuple[TrainState, torch.Tensor] | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return core.load_checkpoint(Path(d))

    def save(self, core: DPOTrainerCore, state: TrainState, reference: torch.Tensor) -> None:
        import tempfile

        import ray.train
        from ray.train import CheckpointConsistencyMode

        metrics = {"step": state.step}
        if self.rank == 0:
            with tempfile.TemporaryDirectory(prefix="selfreward-ckpt-") as d:
                core.save_checkpoint(Path(d), state, reference)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            core.save_checkpoint(None, state, reference)
            ray.train.report(metrics, checkpoint=None)
        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        if self.on_saved is not None:
            self.on_saved({"checkpoint": state.step})
        if self.rank == 0:
            faults.train_worker_point(state.step)
