"""What the driver starts: the engine pool, the trainer and the MC-dropout passes.

``RayBackend`` starts them on the Ray cluster: vLLM (or transformers) engine
actors, Ray Train workers and a Ray task. The driver depends on the
``Backend`` interface only, so its tests run the whole loop against stand-ins
in one process (tests/orchestrator/standins.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from orchestrator.config import RunConfig
from orchestrator.reporting.runlog import RemoteProgress
from orchestrator.specs import engine_spec
from workers.handover import GpuProcess
from workers.progress import run_with_progress
from workers.training.trainer import TrainResult, TrainSpec
from workers.types import AdapterRef, EngineInfo, ScoreRequest

LOG = logging.getLogger(__name__)
Report = Callable[[dict[str, Any]], None]
MCDropoutResult = tuple[list[list[float]], list[float], tuple[GpuProcess, ...]]


class Pool(Protocol):
    """Engines serving ``complete``, ``score`` and ``choice_distribution`` over shards of requests."""

    infos: list[EngineInfo]  # one per engine, once they are up
    engine_name: str  # the engine class, for the log

    def map_shards(self, method: str, shards: list[Any], *args: Any,
                   on_done: Callable[[int, Any], None] | None = None) -> list[Any]: ...

    def kill_engine(self, index: int) -> None: ...

    def sleep(self) -> None: ...

    def wake(self, timeout_s: float) -> float:
        """Wake sleeping engines, each once its GPUs have its memory free (``workers.handover``), its adapters
        proven again; the longest proving time."""
        ...

    def shutdown(self) -> None: ...


class Backend(Protocol):
    def start_pool(self, cfg: RunConfig, model_path: Path) -> Pool:
        """The run's engines, up and ready."""
        ...

    def train(self, cfg: RunConfig, spec: TrainSpec, checkpoints: str, on_message: Report,
              borrowed_gpus: dict[str, list[int]] | None) -> TrainResult:
        """One training stage: writes the adapter into ``spec.output_dir``; resumes from the latest checkpoint under
        ``checkpoints``. ``on_message`` receives the progress messages (``{"checkpoint": ...}`` after each one)."""
        ...

    def mc_dropout(self, cfg: RunConfig, spec: TrainSpec, requests: list[ScoreRequest],
                   reference: AdapterRef | None,
                   borrowed_gpus: dict[str, list[int]] | None) -> MCDropoutResult:
        """``selection.mc_dropout.passes`` stochastic log-probs of the policy (``spec.init_adapter``) and one of the
        reference (None: the base model) per request, and the processes that computed them (on borrowed GPUs the
        hand-over waits for them)."""
        ...


class RayBackend:
    """Engine actors, Ray Train and a Ray task on the connected Ray cluster."""

    def start_pool(self, cfg: RunConfig, model_path: Path) -> Pool:
        from workers.engines.pool import EnginePool, PoolResources

        r = cfg.resources
        if r.engine_backend == "hf":
            from workers.engines.hf import HFEngine as engine_cls
        else:
            from workers.engines.vllm import VLLMEngine as engine_cls
        return EnginePool(engine_spec(cfg, str(model_path)), PoolResources(
            r.engines, r.cpus_per_engine, r.gpus_per_engine, r.engine_max_restarts, r.placement_strategy,
            r.placement_timeout_s), engine_cls=engine_cls, log=LOG.info)

    def train(self, cfg: RunConfig, spec: TrainSpec, checkpoints: str, on_message: Report,
              borrowed_gpus: dict[str, list[int]] | None) -> TrainResult:
        from workers.training.launcher import run_training

        r = cfg.resources
        return run_with_progress(
            lambda q: run_training(spec, r.train_workers, r.cpus_per_train_worker, r.gpus_per_train_worker, checkpoints,
                                   q, r.train_max_failures, borrowed_gpus),
            on_message,
        )

    def mc_dropout(self, cfg: RunConfig, spec: TrainSpec, requests: list[ScoreRequest],
                   reference: AdapterRef | None,
                   borrowed_gpus: dict[str, list[int]] | None) -> MCDropoutResult:
        import ray

        from workers.training.mc_dropout import mc_dropout_task

        mc = cfg.selection.mc_dropout
        task, device, gpu = mc_dropout_remote(mc_dropout_task, cfg, borrowed_gpus)
        bar = RemoteProgress("score MC-dropout")
        try:
            passes, ref, process = run_with_progress(
                lambda q: ray.get(task.remote(spec, requests, mc.passes, mc.p, q, reference, device, gpu)), bar)
        finally:
            bar.close()
        return list(passes), list(ref), (process,)


def mc_dropout_remote(fn: Callable[..., Any], cfg: RunConfig,
                      borrowed_gpus: dict[str, list[int]] | None) -> tuple[Any, str, int | None]:
    """``fn`` as the MC-dropout Ray task, its device and the GPU it borrows: with colocated GPU engines, on the first
    engine's GPU while the engines sleep (``StageEngines.mc_dropout``), in a worker process that exits after the task
    (``max_calls=1``) so that the memory it took is given back for the hand-over to see; else on GPUs (or CPUs) of
    its own."""
    import ray

    r = cfg.resources
    if not borrowed_gpus:
        return (ray.remote(num_cpus=r.cpus_per_train_worker, num_gpus=r.gpus_per_train_worker)(fn),
                "cuda" if r.gpus_per_train_worker else "cpu", None)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node, gpus = next(iter(borrowed_gpus.items()))
    task = ray.remote(max_calls=1)(fn).options(  # max_calls: not an option .options() takes
        num_cpus=r.cpus_per_train_worker, num_gpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    return task, "cuda", gpus[0]
