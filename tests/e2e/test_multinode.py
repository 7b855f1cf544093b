"""Multi-node behaviour on one machine: a head and two worker nodes of a ray.cluster_utils.Cluster.

The engine pool spreads its engines over the worker nodes; a worker node is removed in the middle of
generation and a fresh node joins (as an autoscaler would bring one): the lost engine restarts there and
every request is answered exactly once, with the text the seeded request gives on any engine.

The engines are the transformers engine (``HFEngine``) on the tiny random model: the subject is the pool (placement
over nodes, retries, restarts), which treats every engine class alike; an HF engine starts in seconds where a vLLM
engine takes half a minute of the machine's two cores.
"""

import time

import pytest
import ray
from ray.cluster_utils import Cluster

from tests import specs
from workers.engines.hf import HFEngine
from workers.engines.pool import EnginePool, PoolResources, shard
from workers.types import CompletionRequest, SamplingSpec

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                       "node_ip_address": "127.0.0.1"})
    workers = [c.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address)  # every node on loopback: see tests/conftest.py
    yield c, workers
    ray.shutdown()
    c.shutdown()


def test_engines_spread_over_nodes_and_survive_a_lost_node(cluster, tiny_random_model_path):
    c, (node_a, node_b) = cluster
    spec = specs.engine(tiny_random_model_path, "model.max_model_len=1024", "resources.kv_cache_gib=1")
    pool = EnginePool(spec, PoolResources(engines=2, cpus_per_engine=1, gpus_per_engine=0, max_restarts=2),
                      engine_cls=HFEngine)
    try:
        # One engine per worker node (the head offers no CPU).
        assert {i.node_id for i in pool.infos} == {node_a.node_id, node_b.node_id}
        victim = next(k for k, i in enumerate(pool.infos) if i.node_id == node_b.node_id)
        requests = [CompletionRequest(f"Name a fruit whose name starts with the letter {ch}.", seed=100 + k)
                    for k, ch in enumerate("ABCDEFGH")]
        sampling = SamplingSpec(temperature=0.8, top_p=0.95, max_tokens=12)
        added = []

        def on_done(shard_id, _result):
            if not added:  # the first shard is back: take node B away mid-generation, a new node joins
                c.remove_node(node_b, allow_graceful=False)
                added.append(c.add_node(num_cpus=1, node_ip_address="127.0.0.1"))

        parts = pool.map_shards("complete", shard(requests, 1), sampling, None, on_done=on_done)
        results = [r for part in parts for r in part]
        assert len(results) == len(requests) and all(r.text for r in results)
        # The lost engine comes back on the new node (Ray restarts it in the background: the other engine may
        # have answered every retried shard before the restart is done).
        deadline = time.monotonic() + 300
        while True:
            try:
                info = ray.get(pool.actors[victim].ready.remote())
                break
            except ray.exceptions.ActorUnavailableError:
                assert time.monotonic() < deadline, "the lost engine was not restarted"
                time.sleep(2)
        assert info.node_id == added[0].node_id
        # Seeded requests give the same text whichever engine and node ran them, retried or not.
        again = ray.get(pool.actors[1 - victim].complete.remote(requests, sampling, None))
        assert [r.text for r in again] == [r.text for r in results]
    finally:
        pool.shutdown()
