"""The Ray Train launcher: one process per train worker, DDP (or FSDP) over gloo (CPU) or NCCL (GPU).

``run_training`` runs ``DPOTrainerCore`` on Ray Train's ``TorchTrainer``; a stage started again with the same
storage path resumes from its latest checkpoint (``workers.training.checkpoints``). A failure is reported by
the exception a worker (or the controller) raised, read from Ray Train's own error types.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import pyarrow.parquet as pq
import torch

from workers.handover import Registry, this_process
from workers.progress import reporter
from workers.storage import read_text
from workers.training import canaries
from workers.training.checkpoints import Checkpoints
from workers.training.placement import label_selectors, worker_device
from workers.training.trainer import TRAIN_LOG, DPOTrainerCore, TrainResult, TrainSpec
from workers.types import TrainingError


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker function: every rank trains; rank 0 writes the adapter."""
    import ray.train
    import ray.train.torch

    spec: TrainSpec = config["spec"]
    torch.set_num_threads(spec.torch_threads or os.cpu_count() or 1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    fsdp = world > 1 and spec.strategy == "fsdp"
    device = worker_device(config.get("borrowed_gpus"))
    Registry.add(config.get("processes"), this_process(f"train rank {rank}", device.index if device.type == "cuda" else None))
    core = DPOTrainerCore(spec, device, move=not fsdp)
    examples = core.encode(pq.read_table(spec.pairs_path))
    wrapped = None
    if world > 1:
        core.check_replicas()  # FSDP shards each rank's own copy; DDP is built without broadcasting rank 0's
    if fsdp:
        core.shard()  # the module is sharded in place: it is its own wrapper
    elif world > 1:
        if config.get("borrowed_gpus"):
            wrapped = torch.nn.parallel.DistributedDataParallel(core.model, device_ids=[device.index], init_sync=False)
        else:
            wrapped = ray.train.torch.prepare_model(core.model, move_to_device=False,
                                                    parallel_strategy_kwargs={"init_sync": False})
    report = reporter(config.get("progress")) if rank == 0 else None
    checkpoints = Checkpoints(spec.checkpoint_every, rank, report) if spec.checkpoint_every else None
    result = core.fit(examples, wrapped, rank, world, report, checkpoints)
    weights = core.full_trainable() if core.sharded else None
    requests = canaries.pick(pq.read_table(spec.pairs_path).to_pylist())
    canary = requests, core.canary_logprobs(requests)
    if rank == 0:
        core.save(spec.output_dir, result, weights, canary)


def scaling(workers: int, cpus_per_worker: float, gpus_per_worker: int,
            borrowed_gpus: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """Ray Train's scaling and torch configs: whole GPUs of their own, or the colocated engines' GPUs borrowed.

    Borrowing workers ask Ray for CPUs only, each pinned to the node of one
    engine GPU (``workers.training.placement``); NCCL still connects them.
    """
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    if borrowed_gpus:
        selectors = label_selectors(borrowed_gpus)
        if len(selectors) != workers:
            raise ValueError(f"{workers} colocated train workers for {len(selectors)} engine GPUs")
        return {"scaling_config": ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": cpus_per_worker},
                                                label_selector=selectors),
                "torch_config": TorchConfig(backend="nccl")}
    use_gpu = gpus_per_worker > 0
    resources: dict[str, float] = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    return {"scaling_config": ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
            "torch_config": TorchConfig(backend="nccl" if use_gpu else "gloo")}


def failure_cause(e: BaseException) -> BaseException:
    """What made Ray Train fail: the first failed worker's own exception (by rank), or the controller's; ``e``
    itself for a failure of another kind."""
    workers = getattr(e, "worker_failures", None)  # ray.train.WorkerGroupError
    if workers:
        return workers[min(workers)]
    return getattr(e, "controller_failure", None) or e  # ray.train.ControllerError


def run_training(spec: TrainSpec, workers: int, cpus_per_worker: float, gpus_per_worker: int, storage_path: str,
                 progress: Any = None, max_failures: int = 0,
                 borrowed_gpus: dict[str, list[int]] | None = None) -> TrainResult:
    """Train on Ray Train (DDP over ``workers`` ranks); returns the step log written by rank 0 and the workers'
    processes (``workers.handover``: they may outlive this call).

    ``storage_path`` (local path or URI) holds the run's Ray Train checkpoints:
    calling again with the same path resumes from the latest one. Ray Train
    restarts failed workers from it up to ``max_failures`` times.
    ``progress``: a queue of ``workers.progress`` that rank 0 reports its steps on.
    ``borrowed_gpus``: node id -> GPU ids of colocated (sleeping) engines,
    one train worker on each (``scaling``).
    Raises ray.train's TrainingFailedError when training fails beyond that.
    """
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        TrainingFailedError,  # the V2 class under Ray Train V2 (the default)
    )
    from ray.train.torch import TorchTrainer

    registry = Registry()
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"spec": spec, "progress": progress, "borrowed_gpus": borrowed_gpus,
                           "processes": registry.queue},
        **scaling(workers, cpus_per_worker, gpus_per_worker, borrowed_gpus),
        run_config=RunConfig(storage_path=storage_path, name="dpo", checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    try:
        trainer.fit()
    except BaseException as e:
        with contextlib.suppress(Exception):  # the queue's own failure never hides the training's
            registry.drain()
        if isinstance(e, TrainingFailedError):
            cause = failure_cause(e)
            raise TrainingError(f"training failed: {type(cause).__name__}: {cause}") from e
        raise
    processes = tuple(registry.drain())  # fit() returns before its workers' processes have exited
    log = json.loads(read_text(f"{spec.output_dir.rstrip('/')}/{TRAIN_LOG}"))
    return TrainResult(steps=log["steps"], pairs=log["pairs"], resumed_from_step=log["resumed_from_step"],
                       processes=processes)
