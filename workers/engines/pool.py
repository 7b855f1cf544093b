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


@dataclass(frozen=True)
class PoolResources:
    engines: int
    cpus_per_engine: float
    gpus_per_engine: int  # whole GPUs: the engine takes its whole bundle (colocated trainers borrow them)
    max_restarts: int = 3
    placement_strategy: str = "SPREAD"  # of the engines' bundles over nodes
    placement_timeout_s: float = 600.0


def shard(items: Sequence[T], shard_size: int) -> list[list[T]]:
    """Cut ``items`` into consecutive shards of at most ``shard_size``."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [list(items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


class EnginePool:
    """N engine actors (``VLLMEngine`` unless ``engine_cls`` says otherwise) serving generation, judging and scoring.

    ``engine_cls``: any class with the engine's methods and ``ready() ->
    EngineInfo`` (benchmarks and tests of the dispatcher pass light ones).
    Raises PoolError when the placement group cannot be placed in
    ``placement_timeout_s``.
    """

    def __init__(self, spec: EngineSpec, res: PoolResources, inflight_per_engine: int = 2,
                 engine_cls: type = VLLMEngine) -> None:
        bundle = {"CPU": res.cpus_per_engine, **({"GPU": res.gpus_per_engine} if res.gpus_per_engine else {})}
        self.pg = placement_group([dict(bundle) for _ in range(res.engines)], strategy=res.placement_strategy)
        if not self.pg.wait(timeout_seconds=res.placement_timeout_s):
            remove_placement_group(self.pg)
            raise PoolError(
                f"the cluster cannot place {res.engines} engine(s) of {bundle} each ({res.placement_strategy}) "
                f"within {res.placement_timeout_s:.0f}s (resources.engines, resources.cpus_per_engine, "
                f"resources.gpus_per_engine, resources.placement_strategy); cluster resources: {ray.cluster_resources()}"
            )
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

    def wake(self) -> None:
        ray.get([a.wake.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        remove_placement_group(self.pg)
