"""GPU placement of both scaled configs on Rays with fake GPUs: every engine and train rank, and the GPU it gets.

Ray hands out fake GPUs exactly as real ones (ids, CUDA_VISIBLE_DEVICES), so the layout the shipped configs get on
a cluster is checked here, without a GPU, on one cluster of two 8-GPU nodes: the engines through the real
``EnginePool`` (a light engine class that only reports where it runs), the train ranks through Ray Train with the
real ``workers.training.launcher.scaling`` configs, each rank reporting the GPU ``borrowed_gpu`` gives it.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator.config import load_config
from orchestrator.context import Context
from tests import ROOT, specs
from tests.workers.training.where_am_i import WhereAmI
from workers.engines.pool import EnginePool, PoolResources
from workers.training.launcher import scaling
from workers.training.placement import borrowed_gpu, cuda_index, engine_gpus, label_selectors, my_gpu
from workers.types import EngineInfo

ONE_NODE, TWO_NODES = (ROOT / "jobs" / "configs" / f"llama8b-{n}gpu.yaml" for n in ("1x8", "2x8"))
SPEC = specs.engine("unused", "model.dtype=bfloat16", "model.max_model_len=4096", "lora.rank=16",
                    "resources.kv_cache_gib=1")


def _engines(cfg) -> EnginePool:
    r = cfg.resources
    return EnginePool(SPEC, PoolResources(r.engines, r.cpus_per_engine, r.gpus_per_engine, 0, r.placement_strategy,
                                          placement_timeout_s=60), engine_cls=WhereAmI)


def _train_ranks(cfg, borrowed, out: Path) -> list[dict]:
    """Every rank of a Ray Train run with the run's scaling config reports its node, GPU and Ray's GPU ids."""
    from ray.train import RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    r = cfg.resources

    def report(config):
        ctx = ray.train.get_context()
        rank = {"rank": ctx.get_world_rank(), "local_rank": ctx.get_local_rank(),
                "node": ray.get_runtime_context().get_node_id(), "ray_gpu_ids": ray.get_gpu_ids(),
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "gpu": borrowed_gpu(config["borrowed"])}
        Path(config["out"], f"{rank['rank']}.json").write_text(json.dumps(rank))

    kw = scaling(r.train_workers, r.cpus_per_train_worker, r.gpus_per_train_worker, borrowed)
    assert kw["torch_config"].backend == "nccl"
    TorchTrainer(report, train_loop_config={"borrowed": borrowed, "out": str(out)},
                 scaling_config=kw["scaling_config"], torch_config=TorchConfig(backend="gloo"),  # no NCCL without CUDA
                 run_config=RunConfig(storage_path=str(out / "ray"), name="placement")).fit()
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def _check(cfg, pool: EnginePool, ranks: list[dict]) -> None:
    r = cfg.resources
    held = Counter()
    for info in pool.infos:
        # Each engine holds its whole bundle: gpus_per_engine GPUs, and sees exactly those.
        assert len(info.gpu_ids) == r.gpus_per_engine
        assert info.visible_devices == ",".join(str(g) for g in info.gpu_ids)
        held.update((info.node_id, g) for g in info.gpu_ids)
    assert max(held.values()) == 1  # no GPU held by two engines
    assert len(ranks) == r.train_workers == len(held)
    trained = Counter((k["node"], k["gpu"]) for k in ranks)
    assert max(trained.values()) == 1  # never two train ranks on one GPU (NCCL refuses a duplicate GPU)
    assert set(trained) == set(held)  # exactly one train rank on each engine GPU
    for k in ranks:
        # Train ranks borrow: Ray gives them no GPU, so nothing narrows what they see; they pick theirs by index.
        assert k["ray_gpu_ids"] == [] and k["visible"] is None
        assert cuda_index(k["gpu"], k["visible"]) == k["gpu"]


def _free_port() -> int:
    """Ray Train reads the dashboard's state API: a dashboard on any free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes():
    """A head with no resources and two nodes of 64 CPUs and 8 (fake) GPUs."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True,
                                                       "dashboard_port": _free_port(),
                                                       "dashboard_host": "127.0.0.1", "node_ip_address": "127.0.0.1"})
    nodes = [c.add_node(num_cpus=64, num_gpus=8, node_ip_address="127.0.0.1") for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield nodes
    ray.shutdown()
    c.shutdown()


def test_one_node_colocated_one_engine_and_one_train_rank_per_gpu(two_nodes, tmp_path):
    cfg = load_config(ONE_NODE)
    assert cfg.resources.colocate and cfg.resources.gpus_per_engine == 1
    pool = _engines(cfg)
    try:
        ranks = _train_ranks(cfg, engine_gpus(pool.infos), tmp_path)
        _check(cfg, pool, ranks)
        # PACK: all eight engines on one node, one on each of its GPUs, and the train ranks beside them.
        assert len({i.node_id for i in pool.infos}) == 1
        assert {g for i in pool.infos for g in i.gpu_ids} == set(range(8))
    finally:
        pool.shutdown()


def test_two_nodes_tensor_parallel_engines_and_their_train_ranks(two_nodes, tmp_path):
    cfg = load_config(TWO_NODES)
    assert cfg.resources.colocate and cfg.resources.gpus_per_engine == 2
    pool = _engines(cfg)
    try:
        ranks = _train_ranks(cfg, engine_gpus(pool.infos), tmp_path)
        _check(cfg, pool, ranks)
        # SPREAD: 4 engines of 2 GPUs on each node, 8 train ranks on each.
        assert Counter(i.node_id for i in pool.infos) == {n.node_id: 4 for n in two_nodes}
        assert Counter(k["node"] for k in ranks) == {n.node_id: 8 for n in two_nodes}
    finally:
        pool.shutdown()


def test_borrowed_gpus_by_node_and_local_rank():
    infos = [EngineInfo("h", 1, "n1", (2, 3)), EngineInfo("h", 2, "n2", (0,)), EngineInfo("h", 3, "n1", (0, 1))]
    gpus = engine_gpus(infos)
    assert gpus == {"n1": [0, 1, 2, 3], "n2": [0]}
    assert label_selectors(gpus) == [{"ray.io/node-id": "n1"}] * 4 + [{"ray.io/node-id": "n2"}]
    assert [my_gpu(gpus, "n1", k) for k in range(4)] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="rank 1 on node n2"):
        my_gpu(gpus, "n2", 1)
    with pytest.raises(ValueError, match="same GPU"):
        engine_gpus([EngineInfo("h", 1, "n1", (0,)), EngineInfo("h", 2, "n1", (0,))])
    # A raylet started with CUDA_VISIBLE_DEVICES=4,6: Ray's ids are its entries, CUDA indices their positions.
    assert cuda_index(6, "4,6") == 1 and cuda_index(3, "") == 3
    with pytest.raises(ValueError):
        cuda_index(5, "4,6")


def test_the_loop_lends_engine_gpus_only_while_colocated_engines_are_up():
    cfg = load_config(ONE_NODE)

    class Pool:
        infos = [EngineInfo("h", 1, "n1", (0,)), EngineInfo("h", 2, "n1", (1,))]

    ctx = Context.__new__(Context)
    ctx.cfg, ctx._pool = cfg, None
    assert ctx.borrowed_gpus() is None  # no engine up (a resume at the train stage): train ranks get GPUs of their own
    ctx._pool = Pool()
    assert ctx.borrowed_gpus() == {"n1": [0, 1]}
    ctx.cfg = load_config(ONE_NODE, ["resources.colocate=false", "resources.train_workers=4", "resources.engines=4"])
    assert ctx.borrowed_gpus() is None
