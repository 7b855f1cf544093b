"""A stand-in backend for the driver's tests: the engine pool, the trainer and the MC-dropout passes in the driver's
own process, with no Ray, no engine and no model.

Every result is a function of its request (the seed included) and of the adapter's weights (the bytes of its
``adapter_model.safetensors``; "base" for M0), so two runs of one config produce byte-identical artifacts whatever
was interrupted and resumed in between. The trainer checkpoints like the real one (every
``dpo.checkpoint_every`` steps, resuming from the latest) and writes an adapter folder with the canaries the
stand-in engine proves it by, so the driver's commit, resume and proof paths run as in a real run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from safetensors.numpy import save_file

from workers import faults
from workers.handover import GpuProcess, still_running
from workers.storage import local_copy
from workers.training import canaries
from workers.training.trainer import TrainResult, TrainSpec
from workers.types import (
    AdapterRef,
    ChoiceRequest,
    Completion,
    CompletionRequest,
    EngineInfo,
    SamplingSpec,
    ScoreRequest,
    ScoreResult,
    TrainingError,
)

WEIGHTS = "adapter_model.safetensors"


def _h(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(repr, parts)).encode()).digest()[:8], "big")


def weights_id(folder: str | Path | None) -> str:
    """What a model's outputs depend on: the adapter's weights (None: the base model)."""
    if folder is None:
        return "base"
    return hashlib.sha256((Path(folder) / WEIGHTS).read_bytes()).hexdigest()


def logp(request: ScoreRequest, weights: str) -> ScoreResult:
    n = max(1, len(request.response.split()))
    return ScoreResult(logp=-n * (0.5 + (_h("score", request, weights) % 1000) / 500), num_tokens=n)


class StandInEngine:
    """Answers in the shape the stages parse: a reply that ends in a score line, one token per word."""

    def __init__(self) -> None:
        self.proven: set[AdapterRef] = set()
        self.calls: Counter[str] = Counter()

    def _weights(self, adapter: AdapterRef | None) -> str:
        if adapter is None:
            return "base"
        folder = local_copy(adapter.path, adapter.digest)
        if adapter not in self.proven:
            canaries.prove(adapter, folder, lambda requests: [logp(r, weights_id(folder)) for r in requests])
            self.proven.add(adapter)
        return weights_id(folder)

    def complete(self, requests: list[CompletionRequest], sampling: SamplingSpec,
                 adapter: AdapterRef | None) -> list[Completion]:
        self.calls["complete"] += len(requests)
        w = self._weights(adapter)
        out = []
        for r in requests:
            h = _h("complete", r, sampling, w)
            words = ["reply"] * (h % min(8, sampling.max_tokens)) + [f"Answer: {h % 10}", f"\nScore: {h % 6}"]
            out.append(Completion(" ".join(words), len(words), "stop"))
        return out

    def score(self, requests: list[ScoreRequest], adapter: AdapterRef | None) -> list[ScoreResult]:
        self.calls["score"] += len(requests)
        w = self._weights(adapter)
        return [logp(r, w) for r in requests]

    def choice_distribution(self, requests: list[ChoiceRequest], adapter: AdapterRef | None) -> list[list[float]]:
        self.calls["choice_distribution"] += len(requests)
        w = self._weights(adapter)
        out = []
        for r in requests:
            raw = [1 + _h("choice", r, w, i) % 100 for i in range(len(r.options))]
            out.append([x / sum(raw) for x in raw])
        return out


class StandInPool:
    """One stand-in engine; shards run one after the other, in order."""

    engine_name = "StandInEngine"

    def __init__(self) -> None:
        self.engine = StandInEngine()
        self.infos = [EngineInfo(host="stand-in", pid=os.getpid(), node_id="")]
        self.events: list[str] = []

    def map_shards(self, method: str, shards: list[Any], *args: Any, on_done: Any = None) -> list[Any]:
        results = []
        for sid, shard in enumerate(shards):
            results.append(getattr(self.engine, method)(shard, *args))
            if on_done is not None:
                on_done(sid, results[-1])
        return results

    def kill_engine(self, index: int) -> None:
        self.events.append(f"kill {index}")  # nothing to kill; the real pool's redo is tested in tests/workers

    def sleep(self) -> None:
        self.events.append("sleep")

    def wake(self, timeout_s: float = 300.0) -> float:
        self.events.append("wake")
        return 0.0

    def shutdown(self) -> None:
        self.events.append("shutdown")


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


class StandInBackend:
    """``orchestrator.backend.Backend`` in the driver's process; what it started is kept for the tests to read."""

    def __init__(self, linger_s: float = 0.0) -> None:
        self.pools: list[StandInPool] = []
        self.trained: list[str] = []
        # A trainer whose process outlives ``train`` by ``linger_s`` seconds (Ray Train's fit() returns before its
        # workers have exited): the processes, and those still running each time a pool started.
        self.linger_s = linger_s
        self.lingering: list[GpuProcess] = []
        self.running_at_pool_start: list[list[int]] = []

    def start_pool(self, cfg: Any, model_path: Path) -> StandInPool:
        self.running_at_pool_start.append([p.pid for p in self.lingering if still_running(p)])
        self.pools.append(StandInPool())
        return self.pools[-1]

    def _outliving_process(self) -> tuple[GpuProcess, ...]:
        if not self.linger_s:
            return ()
        import psutil

        child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({self.linger_s})"])
        self.lingering.append(GpuProcess("train rank 0 (stand-in)", "", child.pid, psutil.Process(child.pid).create_time()))
        return (self.lingering[-1],)

    def train(self, cfg: Any, spec: TrainSpec, checkpoints: str, on_message: Any, borrowed_gpus: Any) -> TrainResult:
        """The real trainer's bookkeeping: steps over the kept pairs, a checkpoint every ``checkpoint_every`` steps
        (resumed from the latest), then the adapter; its weights a digest of everything the real ones depend on."""
        self.trained.append(spec.output_dir)
        pairs = pq.read_table(_local(spec.pairs_path))
        kept = int(pc.sum(pairs["kept"]).as_py() or 0)
        per_step = spec.micro_batch_pairs * spec.grad_accum_steps
        per_epoch = math.ceil(kept / per_step)
        total = per_epoch * spec.epochs
        init = None if spec.init_adapter is None else local_copy(spec.init_adapter, spec.init_adapter_digest)
        state = _h("init", weights_id(init), spec.seed, spec.loss, spec.learning_rate,
                   hashlib.sha256(_local(spec.pairs_path).read_bytes()).hexdigest())
        steps: list[dict[str, Any]] = []
        folder = _local(checkpoints) / "stand-in"
        saved = sorted(folder.glob("step_*.json")) if folder.is_dir() else []
        resumed = 0
        if saved:
            last = json.loads(saved[-1].read_text())
            state, steps, resumed = last["state"], last["steps"], last["step"]
            on_message({"resumed_from_step": resumed})
        on_message({"total": total, "unit": "step"})
        for k in range(resumed + 1, total + 1):
            if faults.nan_at(k):  # what the real trainer raises through Ray Train on a NaN loss
                raise TrainingError(f"training failed: FloatingPointError: DPO loss is nan at optimizer step {k}; "
                                    "no update was applied")
            state = _h("step", state, k)
            epoch = (k - 1) // per_epoch
            pairs_k = min(per_step, kept - ((k - 1) % per_epoch) * per_step)
            steps.append({"step": k, "epoch": epoch, "pairs": pairs_k, "loss": 0.7 * 0.9 ** k + (state % 100) / 1e4,
                          "reward_accuracy": (state % 5) / 4, "reward_margin": (state % 7) / 10})
            on_message({"n": 1, "loss": steps[-1]["loss"]})
            if spec.checkpoint_every and k % spec.checkpoint_every == 0:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".step_{k:06d}.tmp"
                tmp.write_text(json.dumps({"state": state, "steps": steps, "step": k}))
                os.replace(tmp, folder / f"step_{k:06d}.json")
                on_message({"checkpoint": k})
        out = _local(spec.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"stand_in.state": np.frombuffer(state.to_bytes(8, "big") * 4, dtype=np.uint8).copy()},
                  str(out / WEIGHTS))
        (out / "adapter_config.json").write_text(json.dumps({"stand_in": True, "r": spec.lora_rank}))
        requests = list(canaries.FIXED)
        served = [logp(r, weights_id(out)) for r in requests]
        base = [logp(r, "base") for r in requests]
        canaries.write(out, spec.dtype, requests, [s.logp for s in served], [b.logp for b in base],
                       [s.num_tokens for s in served])
        return TrainResult(steps=steps, pairs=kept, resumed_from_step=resumed, processes=self._outliving_process())

    def mc_dropout(self, cfg: Any, spec: TrainSpec, requests: list[ScoreRequest], reference: AdapterRef | None,
                   borrowed_gpus: Any) -> tuple[list[list[float]], list[float]]:
        policy = weights_id(local_copy(spec.init_adapter, spec.init_adapter_digest))
        ref = weights_id(None if reference is None else local_copy(reference.path, reference.digest))
        passes = cfg.selection.mc_dropout.passes
        return ([[logp(r, f"{policy}/dropout {i}").logp for i in range(passes)] for r in requests],
                [logp(r, ref).logp for r in requests], ())
