"""A persistent pool of engine actors with sharded dispatch.

Work is cut into shards with deterministic ids (their index); each actor has
at most ``inflight_per_engine`` shards outstanding (back-pressure through
``ray.wait``), so a slow actor never holds a queue of work that a free one
could take. Results come back in shard order whatever order they finish in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import ray

from workers.engine import VLLMEngine
from workers.types import EngineSpec

T = TypeVar("T")


@dataclass(frozen=True)
class PoolResources:
    engines: int
    cpus_per_engine: float
    gpus_per_engine: int
    max_restarts: int = 3


def shard(items: Sequence[T], shard_size: int) -> list[list[T]]:
    """Cut ``items`` into consecutive shards of at most ``shard_size``."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [list(items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


class EnginePool:
    """N ``VLLMEngine`` actors serving generation, judging and scoring."""

    def __init__(self, spec: EngineSpec, res: PoolResources, inflight_per_engine: int = 2) -> None:
        actor_cls = ray.remote(VLLMEngine)
        self.actors = [
            actor_cls.options(
                num_cpus=res.cpus_per_engine,
                num_gpus=res.gpus_per_engine,
                max_restarts=res.max_restarts,
                max_task_retries=res.max_restarts,
            ).remote(spec)
            for _ in range(res.engines)
        ]
        self.inflight_per_engine = inflight_per_engine
        ray.get([a.ready.remote() for a in self.actors])

    def map_shards(self, method: str, shards: list[Any], *args: Any, on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Call ``actor.method(shard, *args)`` for every shard; results in shard order.

        ``on_done(shard_id, result)`` is called as each shard finishes.
        """
        results: list[Any] = [None] * len(shards)
        pending: dict[ray.ObjectRef, tuple[int, int]] = {}
        load = [0] * len(self.actors)
        next_id = 0
        while next_id < len(shards) or pending:
            while next_id < len(shards) and min(load) < self.inflight_per_engine:
                a = load.index(min(load))
                ref = getattr(self.actors[a], method).remote(shards[next_id], *args)
                pending[ref] = (next_id, a)
                load[a] += 1
                next_id += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                sid, a = pending.pop(ref)
                load[a] -= 1
                results[sid] = ray.get(ref)
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

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
