"""Engine-pool dispatch on uneven shards: our back-pressure dispatcher vs static round-robin assignment.

Light engines (each call sleeps for its shard's cost, so no CPU is needed and
the numbers measure dispatch alone) serve the same uneven shards (lognormal
costs: a few shards take many times the median, like batches of very
different response lengths) through ``EnginePool.map_shards`` with 1 and 2
shards in flight per engine, and with every shard assigned up front
round-robin, as a naive dispatcher would. Two cluster shapes: equal engines,
and one engine 3x slower (a busy or weaker node). Efficiency = the engines'
busy time / (engines x wall time); 1.0 is perfect.

    python -m benchmarks.dispatch [--engines 4] [--shards 48]
"""

from __future__ import annotations

import argparse
import random
import time

import ray

from benchmarks import write_result
from workers.engines.pool import EnginePool, PoolResources
from workers.types import EngineInfo


class SleepEngine:
    """Stands in for an engine: ``complete`` takes ``sum(shard) * slowdown`` seconds."""

    def __init__(self, spec: object) -> None:
        self.slowdown = 1.0
        self.served = 0

    def set_slowdown(self, factor: float) -> None:
        self.slowdown = factor

    def ready(self) -> EngineInfo:
        import os
        import socket

        return EngineInfo(socket.gethostname(), os.getpid(), ray.get_runtime_context().get_node_id())

    def complete(self, shard: list[float]) -> list[float]:
        time.sleep(sum(shard) * self.slowdown)
        self.served += 1
        return shard

    def calls(self) -> int:
        return self.served


def uneven_shards(n: int, seed: int, mean_s: float) -> list[list[float]]:
    """Shards whose costs are lognormal (a few are many times the median), like responses of very different lengths."""
    rng = random.Random(seed)
    costs = [rng.lognormvariate(0, 1.0) for _ in range(n)]
    scale = mean_s / (sum(costs) / n)
    return [[c * scale] for c in costs]


def round_robin(pool: EnginePool, shards: list[list[float]]) -> None:
    refs = [pool.actors[i % len(pool.actors)].complete.remote(s) for i, s in enumerate(shards)]
    ray.get(refs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--shards", type=int, default=48)
    p.add_argument("--mean-shard-s", type=float, default=0.2)
    args = p.parse_args()
    ray.init(address="local", num_cpus=args.engines, include_dashboard=False, _node_ip_address="127.0.0.1")
    shards = uneven_shards(args.shards, 0, args.mean_shard_s)
    work = sum(sum(s) for s in shards)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, slowdowns in (("equal engines", [1.0] * args.engines),
                                ("one engine 3x slower", [3.0] + [1.0] * (args.engines - 1))):
        rows = {}
        for name, inflight in (("pool, 1 in flight", 1), ("pool, 2 in flight", 2), ("round-robin up front", 0)):
            pool = EnginePool(None, PoolResources(args.engines, 1, 0), inflight_per_engine=max(1, inflight),  # type: ignore[arg-type]
                              engine_cls=SleepEngine)
            ray.get([a.set_slowdown.remote(f) for a, f in zip(pool.actors, slowdowns)])
            t0 = time.monotonic()
            if inflight:
                pool.map_shards("complete", shards)
            else:
                round_robin(pool, shards)
            wall = time.monotonic() - t0
            pool.shutdown()
            ideal = work / sum(1 / f for f in slowdowns)  # every engine busy until the same moment
            rows[name] = {"wall_s": round(wall, 3), "efficiency": round(ideal / wall, 3)}
        results[scenario] = rows
    ray.shutdown()
    ratios = {sc: round(r["round-robin up front"]["wall_s"] / r["pool, 1 in flight"]["wall_s"], 3) for sc, r in results.items()}
    result = {"engines": args.engines, "shards": args.shards, "work_s": round(work, 3),
              "largest_shard_s": round(max(sum(s) for s in shards), 3), "results": results,
              "throughput_ratio_pool_over_round_robin": ratios}
    out = write_result("dispatch", result)
    print(f"{'scenario':<22} {'dispatcher':<22} {'wall s':>8} {'efficiency':>10}")
    for sc, rows in results.items():
        for name, r in rows.items():
            print(f"{sc:<22} {name:<22} {r['wall_s']:>8.2f} {r['efficiency']:>10.3f}")
    print(f"throughput ratio pool (1 in flight) / round-robin: {ratios}  (wrote {out})")


if __name__ == "__main__":
    main()
