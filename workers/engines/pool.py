"""A persistent pool of engine actors with sharded dispatch.

Each engine actor holds one bundle of a placement group (``gpus_per_engine``
whole GPUs for tensor parallelism, or CPUs), spread over the cluster's nodes;
colocated train workers borrow the engines' GPUs (``workers.training.placement``). Work
is cut into shards; each actor has at most ``inflight_per_engine`` shards
outstanding (back-pressure through ``ray.wait``), so a slow actor never holds
a queue of work that a free one could take, and uneven shards do not leave
actors idle. Results come back in shard order whatever order they finish in.

An engine actor that dies (process crash, node lost) is restarted by Ray
(``max_restarts``; on another node when its bundle is rescheduled there).
Ray retries the calls it was running (``max_task_retries``); a call that
still fails because its engine was unreachable is sent again by the pool, to
any engine. Every shard's result is returned exactly once.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from workers.engines.vllm import VLLMEngine
from workers.types import EngineInfo, EngineSpec, PoolError

T = TypeVar("T")
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolResources:
    engines: int
    cpus_per_engine: float
    gpus_per_engine: int  # whole GPUs: the engine takes its whole bundle (colocated trainers borrow them)
    max_restarts: int = 3
    placement_strategy: str = "SPREAD"  # of the engines' bundles over nodes
    placement_timeout_s: float = 3600.0  # long enough for an autoscaler to boot and set up a GPU node


@dataclass(frozen=True)
class Autoscaling:
    """What the cluster's autoscaler reports: nodes requested or booting, and launches that failed (``reported``
    False: its status could not be read, so it may be there)."""

    launching: int
    failed: int
    reported: bool = True


def autoscaling(stale_s: float = 120.0) -> Autoscaling | None:
    """The autoscaler's report (v2 through the GCS, v1 from the status it writes to the GCS's store); None when no
    autoscaler can add nodes (a local Ray, nodes started by hand: Ray's monitor then runs over a read-only provider)
    or its report is older than ``stale_s``; ``Autoscaling(0, 0, reported=False)`` when its status could not be
    read (an RPC timing out): then the wait does not conclude that nothing can change."""
    import json
    import time

    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2():
            from ray.autoscaler.v2.sdk import get_cluster_status

            st = get_cluster_status(ray.get_runtime_context().gcs_address)
            return Autoscaling(sum(r.count for r in st.pending_launches) + len(st.pending_nodes),
                               sum(r.count for r in st.failed_launches))
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        status = json.loads(raw) if raw else {}
        report = status.get("autoscaler_report")
        if not report or time.time() - float(status.get("time", 0)) > stale_s:
            return None
        # A Ray started without a cluster config runs the monitor over a read-only provider: it names each node's
        # type after the node and can launch none.
        from ray.autoscaler._private.util import format_readonly_node_type

        readonly = {format_readonly_node_type(n["NodeID"]) for n in ray.nodes()}
        if set(report.get("active_nodes") or {}) <= readonly and not report.get("pending_launches"):
            return None
        return Autoscaling(sum((report.get("pending_launches") or {}).values()) + len(report.get("pending_nodes") or []),
                           len(report.get("failed_nodes") or []))
    except Exception:  # noqa: BLE001 - Ray's autoscaler interfaces are internal
        return Autoscaling(0, 0, reported=False)


def _amounts(resources: dict[str, float], keys: Sequence[str]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in keys)


def wait_placed(pg: Any, what: str, need: dict[str, float], timeout_s: float, fields: str, poll_s: float = 10.0,
                scaling: Callable[[], Autoscaling | None] = autoscaling,
                log: Callable[[str], None] = LOG.info) -> float:
    """Wait until placement group ``pg`` (``need`` in all) is placed; the seconds it took.

    While it waits, a line every ``poll_s`` says what is asked, what the
    cluster has free and how many nodes its autoscaler is launching. With no
    autoscaler running and fewer resources in the whole cluster than asked,
    nothing can change: PoolError at once. Otherwise PoolError after
    ``timeout_s`` (naming ``fields`` and resources.placement_timeout_s).
    """
    import time

    t0 = time.monotonic()
    keys = sorted(need)
    while not pg.wait(timeout_seconds=max(0.0, min(poll_s, timeout_s - (time.monotonic() - t0)))):
        elapsed = time.monotonic() - t0
        total, free, auto = ray.cluster_resources(), ray.available_resources(), scaling()
        short = [k for k in keys if total.get(k, 0) < need[k]]
        state = (f"{_amounts(free, keys)} free of {_amounts(total, keys)}, "
                 + ("no autoscaler running" if auto is None else "autoscaler status unknown" if not auto.reported
                    else f"{auto.launching} node(s) launching" + (f", {auto.failed} failed" if auto.failed else "")))
        if (short and auto is None) or elapsed >= timeout_s:
            why = ("the cluster has too few and no autoscaler runs to add nodes" if short and auto is None
                   else f"not placed within {timeout_s:g}s (resources.placement_timeout_s)")
            raise PoolError(f"the cluster cannot place {what}: {why} ({fields}); asked {_amounts(need, keys)}: {state}")
        log(f"  waiting for {what}: {_amounts(need, keys)} asked, {state} ({elapsed:.0f}s of {timeout_s:g}s)")
    return time.monotonic() - t0


def shard(items: Sequence[T], shard_size: int) -> list[list[T]]:
    """Cut ``items`` into consecutive shards of at most ``shard_size``."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [list(items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


class EnginePool:
    """N engine actors (``VLLMEngine`` unless ``engine_cls`` says otherwise) serving generation, judging and scoring.

    ``engine_cls``: any class with the engine's methods and ``ready() ->
    EngineInfo`` (benchmarks and tests of the dispatcher pass light ones).
    ``log``: where the wait for placement reports its progress.
    Raises PoolError when the placement group cannot be placed
    (``wait_placed``: at once where nothing can add the resources, else
    after ``placement_timeout_s``, showing its progress meanwhile).
    """

    def __init__(self, spec: EngineSpec, res: PoolResources, inflight_per_engine: int = 2,
                 engine_cls: type = VLLMEngine, log: Callable[[str], None] = LOG.info) -> None:
        bundle = {"CPU": res.cpus_per_engine, **({"GPU": res.gpus_per_engine} if res.gpus_per_engine else {})}
        self.pg = placement_group([dict(bundle) for _ in range(res.engines)], strategy=res.placement_strategy)
        what = f"{res.engines} engine(s) of {bundle} each ({res.placement_strategy})"
        fields = "resources.engines, resources.cpus_per_engine, resources.gpus_per_engine, resources.placement_strategy"
        try:
            wait_placed(self.pg, what, {k: v * res.engines for k, v in bundle.items()}, res.placement_timeout_s, fields,
                        log=log)
        except PoolError:
            remove_placement_group(self.pg)
            raise
        specs = self._threaded(spec, res)
        actor_cls = ray.remote(engine_cls)
        self.actors = [
            actor_cls.options(
                num_cpus=res.cpus_per_engine,
                num_gpus=res.gpus_per_engine,
                max_restarts=res.max_restarts,
                max_task_retries=res.max_restarts,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=i, placement_group_capture_child_tasks=True
                ),
            ).remote(specs[i])
            for i in range(res.engines)
        ]
        self.inflight_per_engine = inflight_per_engine
        self.max_shard_attempts = res.max_restarts + 2
        self.infos: list[EngineInfo] = ray.get([a.ready.remote() for a in self.actors])
        self.engine_name = engine_cls.__name__

    def _threaded(self, spec: EngineSpec | None, res: PoolResources) -> list[EngineSpec | None]:
        """Each engine's spec: a CPU engine left to its process's threads (``threads=0``) gets its node's CPUs
        (Ray's count) divided among the engines placed on that node."""
        if spec is None or spec.threads or res.gpus_per_engine:
            return [spec] * res.engines
        nodes = placement_group_table(self.pg)["bundles_to_node_id"]
        sharing = Counter(nodes.values())
        cpus = {n["NodeID"]: n["Resources"].get("CPU", 1) for n in ray.nodes() if n["Alive"]}
        return [replace(spec, threads=max(1, int(cpus.get(nodes[i], 1) // sharing[nodes[i]])))
                for i in range(res.engines)]

    def map_shards(self, method: str, shards: list[Any], *args: Any,
                   on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Call ``actor.method(shard, *args)`` for every shard; results in shard order.

        ``on_done(shard_id, result)`` is called once per shard as it finishes.
        A shard whose engine died or became unreachable before answering
        (a crash, a lost node) is sent again, preferably to another engine,
        up to ``max_shard_attempts`` times; Ray restarts the engine meanwhile.
        """
        results: list[Any] = [None] * len(shards)
        pending: dict[ray.ObjectRef, tuple[int, int]] = {}
        load = [0] * len(self.actors)
        attempts = [0] * len(shards)
        failed_on: dict[int, int] = {}  # shard -> the engine it last failed on
        queue = list(range(len(shards)))
        while queue or pending:
            while queue and min(load) < self.inflight_per_engine:
                sid = queue.pop(0)
                free = [i for i in range(len(self.actors)) if load[i] < self.inflight_per_engine]
                a = min(free, key=lambda i: (i == failed_on.get(sid), load[i]))
                attempts[sid] += 1
                pending[getattr(self.actors[a], method).remote(shards[sid], *args)] = (sid, a)
                load[a] += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                sid, a = pending.pop(ref)
                load[a] -= 1
                try:
                    results[sid] = ray.get(ref)
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError):
                    if attempts[sid] >= self.max_shard_attempts:
                        raise
                    failed_on[sid] = a
                    queue.insert(0, sid)  # not answered: sent again, first
                    continue
                if on_done is not None:
                    on_done(sid, results[sid])
        return results

    def map_items(self, method: str, items: Sequence[Any], shard_size: int, *args: Any,
                  on_shard: Callable[[list[Any]], None] | None = None) -> list[Any]:
        """Shard ``items``, run ``actor.method(shard, *args)`` on each, return the results in item order.

        Assumes ``method`` returns one result per item of its shard.
        ``on_shard(results)`` is called as each shard finishes.
        """
        done = None if on_shard is None else (lambda _sid, part: on_shard(part))
        return [r for part in self.map_shards(method, shard(items, shard_size), *args, on_done=done) for r in part]

    def kill_engine(self, index: int) -> None:
        """SIGKILL engine ``index``'s process (fault injection; the engine must run on this machine)."""
        os.kill(self.infos[index].pid, signal.SIGKILL)

    def sleep(self) -> None:
        """Free the engines' accelerator memory for the trainer (vLLM sleep mode); ``wake`` restores them."""
        ray.get([a.sleep.remote() for a in self.actors])

    def wake(self, timeout_s: float = 300.0) -> float:
        """Wake every engine: each waits until its GPUs have its memory free, then proves its adapters again
        (``workers.handover``); the longest proving time."""
        return max(ray.get([a.wake.remote(timeout_s) for a in self.actors]), default=0.0)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        remove_placement_group(self.pg)
