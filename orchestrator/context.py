"""What every stage of a run needs: the config, the run directory, and the engine pool.

A stage calls the engines through ``Engines``, typed methods that
``Context.engines_for(stage_key)`` binds to that stage's part files: items
are cut into shards, each shard's results are committed as a part file as
soon as it finishes, and a call that finds committed parts (a resumed stage)
sends only the items they do not cover. So a shard whose part is committed is
never redone, and one that is not is redone exactly once, whatever died (the
driver, an engine, a node).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from orchestrator.backend import Backend, Pool
from orchestrator.config import RunConfig
from orchestrator.models import ModelError, check_adapter
from orchestrator.reporting.runlog import Progress
from orchestrator.run.rundir import RunDir
from orchestrator.specs import train_spec
from workers import faults
from workers.handover import GpuProcess, wait_exited
from workers.storage import local_copy
from workers.training import canaries
from workers.training.placement import engine_gpus
from workers.types import (
    AdapterRef,
    ChoiceRequest,
    Completion,
    CompletionRequest,
    SamplingSpec,
    ScoreRequest,
    ScoreResult,
)

LOG = logging.getLogger(__name__)
# How each engine method's results are stored in part files (None: a plain value per item).
RESULT_TYPES: dict[str, type | None] = {"complete": Completion, "score": ScoreResult, "choice_distribution": None}


def _encode(method: str, results: list[Any]) -> pa.Table:
    rows = [asdict(r) if is_dataclass(r) else {"value": r} for r in results]
    return pa.Table.from_pylist(rows)


def _decode(method: str, table: pa.Table) -> list[Any]:
    cls = RESULT_TYPES[method]
    return [row["value"] if cls is None else cls(**row) for row in table.to_pylist()]


def uncovered_ranges(n: int, covered: list[tuple[int, int]], shard_size: int) -> list[tuple[int, int]]:
    """Shards [first, end) over the items of [0, n) that no ``covered`` range holds.

    Each maximal uncovered run is cut from its start into ``shard_size`` pieces,
    so a run resumed with the same shard size re-forms the shards it lost.
    """
    mask = [False] * n
    for a, b in covered:
        for i in range(a, min(b, n)):
            mask[i] = True
    out: list[tuple[int, int]] = []
    i = 0
    while i < n:
        if mask[i]:
            i += 1
            continue
        j = i
        while j < n and not mask[j]:
            j += 1
        out += [(k, min(k + shard_size, j)) for k in range(i, j, shard_size)]
        i = j
    return out


class Engines(Protocol):
    """The engine operations a stage uses: one result per request, in order. ``desc`` names the call (unique within
    the stage): the progress bar's label, and the folder of its part files."""

    def complete(self, requests: list[CompletionRequest], sampling: SamplingSpec, adapter: AdapterRef | None, *,
                 desc: str) -> list[Completion]: ...

    def score(self, requests: list[ScoreRequest], adapter: AdapterRef | None, *, desc: str) -> list[ScoreResult]: ...

    def choose(self, requests: list[ChoiceRequest], adapter: AdapterRef | None, *, desc: str) -> list[list[float]]:
        """Each request's option probabilities, renormalised over its options."""
        ...

    def mc_dropout(self, requests: list[ScoreRequest], policy: AdapterRef, reference: AdapterRef | None,
                   seed: int) -> tuple[list[list[float]], list[float]]:
        """``selection.mc_dropout.passes`` log-probs of ``policy`` with dropout on, and the reference's by the same
        code without, per request (on the trainer's model code; on colocated GPU engines while they sleep)."""
        ...


@dataclass(frozen=True)
class StageEngines:
    """``Engines`` of the run's pool for the stage ``key``: every call exactly once across resumes."""

    ctx: Context
    key: str

    def complete(self, requests: list[CompletionRequest], sampling: SamplingSpec, adapter: AdapterRef | None, *,
                 desc: str) -> list[Completion]:
        return self._call("complete", requests, sampling, adapter, desc=desc)

    def score(self, requests: list[ScoreRequest], adapter: AdapterRef | None, *, desc: str) -> list[ScoreResult]:
        return self._call("score", requests, adapter, desc=desc)

    def choose(self, requests: list[ChoiceRequest], adapter: AdapterRef | None, *, desc: str) -> list[list[float]]:
        return self._call("choice_distribution", requests, adapter, desc=desc)

    def mc_dropout(self, requests: list[ScoreRequest], policy: AdapterRef, reference: AdapterRef | None,
                   seed: int) -> tuple[list[list[float]], list[float]]:
        """On colocated GPU engines, in their sleep window (as training): an 8B model's copy does not fit beside an
        awake engine (``selfreward plan``)."""
        ctx = self.ctx
        spec = train_spec(ctx.cfg, ctx.model_path, seed, policy, "", "")
        borrowed = ctx.borrowed_gpus()
        if borrowed:
            ctx.release_engines()
        passes, ref, processes = ctx.backend.mc_dropout(ctx.cfg, spec, requests, reference, borrowed)
        if borrowed:
            ctx.reacquire_engines(processes)
        return passes, ref

    def _call(self, method: str, items: list[Any], *args: Any, desc: str) -> list[Any]:
        """``method`` of the engine actors over ``items``, sharded, each shard's results committed as a part file."""
        if not items:
            return []
        ctx, key, rd, n = self.ctx, self.key, self.ctx.rd, len(items)
        parts_dir = rd.parts_dir(key, desc)
        results: list[Any] = [None] * n
        committed = {r: p for r, p in rd.committed_parts(parts_dir).items() if r[1] <= n}
        for (a, b), part in committed.items():
            results[a:b] = _decode(method, rd.read_table(part))
        rd.reused_parts(key, len(committed))
        if committed:
            LOG.debug(f"  {desc}: {len(committed)} part(s) committed earlier, reused")
        ranges = uncovered_ranges(n, list(committed), ctx.cfg.resources.shard_size)
        if not ranges:
            return results
        pool = ctx.pool()
        bar = Progress(desc, n)
        bar.advance(n - sum(b - a for a, b in ranges))

        def done(sid: int, part: list[Any]) -> None:
            a, b = ranges[sid]
            results[a:b] = part
            rd.write_part(key, parts_dir, a, b, _encode(method, part))
            LOG.debug(f"  {desc}: items {a}-{b - 1} committed (engine shard {sid})")
            bar.advance(len(part), sum(getattr(r, "num_tokens", 0) for r in part))
            if faults.engine_point(f"{key}:part"):
                LOG.warning(f"  fault injection: killing engine 0 (pid {pool.infos[0].pid}) during {desc}")
                pool.kill_engine(0)

        try:
            pool.map_shards(method, [items[a:b] for a, b in ranges], *args, on_done=done)
        finally:
            bar.close()
        return results


@dataclass
class Context:
    """The run's shared state: its config, run directory, model, and the engine pool its backend started."""

    cfg: RunConfig
    rd: RunDir
    model_path: Path
    backend: Backend
    overlong: dict[str, Any] = field(default_factory=dict)  # what data.overlong did to each prompt set
    engine_start_seconds: float = 0.0  # spent starting engines since the last metrics were taken
    _pool: Pool | None = None
    _adapters_checked: set[str] = field(default_factory=set)

    def check_adapters(self, adapters: list[AdapterRef | None]) -> None:
        """Check, once per run, that each committed adapter fits the base model and carries the canaries every
        engine proves it with (``workers.training.canaries``); ModelError otherwise."""
        for a in adapters:
            if a is not None and a.name not in self._adapters_checked and self.rd.exists(f"{a.name}/adapter"):
                folder = Path(local_copy(a.path, a.digest))
                check_adapter(folder, self.model_path, self.cfg.model.trust_remote_code)
                proof = canaries.load(folder)
                if proof is None:
                    raise ModelError(f"adapter {a.name} ({a.path}) has no {canaries.CANARIES_FILE}: no engine could "
                                     "prove it serves it; rerun with --redo " + f"{a.name}/train")
                if not canaries.distinguishable(*proof):
                    LOG.warning(f"  note: the canaries of {a.name} are within {proof[1]} nats/token of the base model: "
                                "an engine serving the base model instead would pass their check")
                self._adapters_checked.add(a.name)

    def pool(self) -> Pool:
        """The engine pool, started on first use (a fully committed resume starts none)."""
        if self._pool is None:
            t0 = time.monotonic()
            self._pool = self.backend.start_pool(self.cfg, self.model_path)
            hosts = sorted({i.host for i in self._pool.infos})
            started = time.monotonic() - t0
            self.engine_start_seconds += started
            threads = sorted({i.threads for i in self._pool.infos if i.threads})
            LOG.info(f"  engine pool: {len(self._pool.infos)} engine(s) ready in {started:.1f}s on "
                     f"{', '.join(hosts)} ({self._pool.engine_name}"
                     + (f", {'/'.join(map(str, threads))} thread(s) each" if threads else "") + ")")
        return self._pool

    def engines_for(self, key: str) -> StageEngines:
        """The engines, for the stage ``key`` (its part files are filed under it)."""
        return StageEngines(self, key)

    def take_engine_start_seconds(self) -> float:
        """Engine start-up time since the last call (part of the stage times; the loop benchmark subtracts it)."""
        seconds, self.engine_start_seconds = self.engine_start_seconds, 0.0
        return round(seconds, 3)

    def release_engines(self) -> None:
        """Before training (or MC-dropout on their GPUs) in colocation mode: GPU engines sleep; CPU engines are shut
        down (restarted on next use)."""
        if self._pool is None:
            return
        if self.cfg.resources.gpus_per_engine > 0:
            self._pool.sleep()
            LOG.info("  engines asleep while the trainer holds the GPUs (colocate)")
        else:
            self.close()
            LOG.info("  engines shut down while the trainer runs (colocate on CPU)")

    def reacquire_engines(self, processes: Sequence[GpuProcess] = ()) -> None:
        """After training in colocation mode, the hand-over (``workers.handover``): wait until the ``processes``
        that used the engines' devices have exited, then wake sleeping GPU engines (each waits for its memory and
        proves its adapters again). CPU engines restart lazily."""
        r = self.cfg.resources
        waited = wait_exited(processes, r.handover_timeout_s)
        if self._pool is not None and r.gpus_per_engine > 0:
            proving = self._pool.wake(r.handover_timeout_s)
            LOG.info(f"  engines awake: {len(processes)} trainer process(es) had exited {waited:.1f}s after it "
                     f"returned; adapters proven again in {proving:.1f}s")
        elif waited >= 1.0:
            LOG.info(f"  {len(processes)} trainer process(es) exited {waited:.1f}s after it returned")

    def borrowed_gpus(self) -> dict[str, list[int]] | None:
        """With colocate on GPUs, while engines are up: node id -> the GPUs they hold (``workers.training.placement``)."""
        if not (self.cfg.resources.colocate and self.cfg.resources.gpus_per_engine) or self._pool is None:
            return None
        return engine_gpus(self._pool.infos)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
