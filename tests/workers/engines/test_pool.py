"""The engine pool's dispatcher, with light engines that sleep instead of computing (no model needed)."""

from dataclasses import replace

import pytest
import ray

from benchmarks.dispatch import SleepEngine
from tests import specs
from tests.workers.training.where_am_i import WhereAmI
from workers.engines.pool import EnginePool, PoolResources, shard
from workers.types import PoolError


def test_shard_keeps_order_and_sizes():
    assert shard(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert shard([], 4) == []
    with pytest.raises(ValueError, match="shard_size"):
        shard([1], 0)


def test_back_pressure_gives_a_slow_engine_less_work_and_keeps_order(local_ray):
    pool = EnginePool(None, PoolResources(2, 1, 0), engine_cls=SleepEngine)
    try:
        ray.get(pool.actors[0].set_slowdown.remote(10.0))
        shards = [[0.02 + i / 1000] for i in range(20)]
        served = []
        results = pool.map_shards("complete", shards, on_done=lambda sid, _: served.append(sid))
        assert results == shards  # in shard order, whatever order they finished in
        assert sorted(served) == list(range(20))  # each shard exactly once
        # The slow engine (10x) is never given more than its 2 in-flight shards at a time, so the fast one
        # takes nearly all the work: by the time the slow one finished 2 shards the fast one did ~18.
        slow, fast = ray.get([a.calls.remote() for a in pool.actors])
        assert slow + fast == 20 and slow <= 4
    finally:
        pool.shutdown()


@pytest.mark.parametrize(("engines", "threads", "expected"), [(1, 0, 2), (2, 0, 1), (1, 1, 1), (2, 3, 3)])
def test_cpu_engines_share_their_nodes_cpus_unless_told_their_threads(local_ray, engines, threads, expected):
    spec = replace(specs.engine("model"), threads=threads)
    pool = EnginePool(spec, PoolResources(engines, 1, 0), engine_cls=WhereAmI)
    try:
        given = ray.get([a.given.remote() for a in pool.actors])
        assert [g.threads for g in given] == [expected] * engines  # local_ray: one node of 2 CPUs
        assert all(replace(g, threads=threads) == spec for g in given)
    finally:
        pool.shutdown()


def test_a_pool_the_cluster_cannot_place_is_a_clear_error(local_ray):
    with pytest.raises(PoolError, match=r"cannot place 3 engine\(s\) of \{'CPU': 1\} each \(SPREAD\): the cluster has "
                                        r"too few and no autoscaler runs.*asked 3 CPU: 2 CPU free of 2 CPU"):
        EnginePool(None, PoolResources(3, 1, 0, placement_timeout_s=2), engine_cls=SleepEngine)


def test_the_local_ray_listens_on_loopback_only(local_ray, request):
    import os

    import psutil

    # The golden run's Ray head (tests/e2e/golden.py) is another cluster, started by this process too: not ours.
    golden = getattr(request.config, "_golden", None)
    head = golden.head.proc.pid if golden is not None and golden.head is not None else None
    theirs = set() if head is None else {head} | {p.pid for p in psutil.Process(head).children(recursive=True)}
    ours = [p for p in psutil.Process(os.getpid()).children(recursive=True)  # gcs_server, raylet, agents, workers
            if p.pid not in theirs]
    listening = [(p.name(), c.laddr.ip) for p in ours for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening, "the local Ray's servers were not found"
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for _, ip in listening), listening
