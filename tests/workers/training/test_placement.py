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


CLUSTER: list[Cluster] = []  # the module's cluster, for a test that adds a node


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
    CLUSTER[:] = [c]
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


def test_mc_dropout_on_colocated_gpu_engines_runs_while_they_sleep():
    """A copy of an 8B model does not fit beside an awake engine: on colocated GPU engines MC-dropout takes the first
    engine's GPU in their sleep window, and they wake after the hand-over (its task's process gone)."""
    from workers.handover import this_process
    from workers.types import AdapterRef, ScoreRequest

    events: list = []

    class Pool:  # a stand-in for the engine pool
        infos = [EngineInfo("h", 1, "n1", (0,)), EngineInfo("h", 2, "n1", (1,))]

        def sleep(self):
            events.append("sleep")

        def wake(self, timeout_s):
            events.append("wake")
            return 0.0

    import subprocess
    import sys

    import psutil

    from orchestrator.context import StageEngines
    from workers.handover import GpuProcess, HandoverError

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    exited = GpuProcess("MC-dropout (stand-in)", "", done.pid, psutil.Process(done.pid).create_time(), 0)
    done.wait()
    task_process = [exited, this_process("MC-dropout (stand-in: this process, still running)")]

    class Backend:  # a stand-in for the Ray backend
        def mc_dropout(self, cfg, spec, requests, reference, borrowed):
            events.append(("MC-dropout", borrowed))
            return [[-1.0, -1.1]], [-1.0], (task_process.pop(0),)

    ctx = Context.__new__(Context)
    ctx.cfg = load_config(ONE_NODE, ["selection.mc_dropout.passes=2", "resources.handover_timeout_s=0.2"])
    ctx._pool, ctx.backend, ctx.model_path = Pool(), Backend(), "m"
    call = [ScoreRequest("q", "a", "stop")], AdapterRef("p", "x"), None, 1
    assert StageEngines(ctx, "iter_001/score").mc_dropout(*call) == ([[-1.0, -1.1]], [-1.0])
    assert events == ["sleep", ("MC-dropout", {"n1": [0, 1]}), "wake"]
    events.clear()
    with pytest.raises(HandoverError, match="MC-dropout"):  # its process still runs: the engines are not woken
        StageEngines(ctx, "iter_001/score").mc_dropout(*call)
    assert events == ["sleep", ("MC-dropout", {"n1": [0, 1]})]


def test_the_hand_over_waits_for_train_processes_that_outlive_fit_each_on_its_node(two_nodes, tmp_path):
    """Ray Train's fit() returns before its workers' processes have exited. Here a stand-in rank on each node
    registers, as a real rank registers itself (launcher), a stand-in for its process that holds on until the test
    lets it go (a process of the test's: Ray kills what its workers start): the hand-over waits for every one, on
    the node the rank ran on (a Ray task pinned there), and names those still running at its limit."""
    import subprocess
    import sys
    import threading

    import psutil
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from workers.handover import GpuProcess, HandoverError, Registry, still_running, wait_exited

    go = tmp_path / "go"
    holders = [subprocess.Popen([sys.executable, "-c", f"import os, time\nwhile not os.path.exists({str(go)!r}): "
                                 "time.sleep(0.05)"]) for _ in range(2)]
    started = [psutil.Process(h.pid).create_time() for h in holders]

    def rank(r: int, pid: int, start: float, queue) -> None:
        Registry.add(queue, GpuProcess(f"train rank {r} (stand-in)", ray.get_runtime_context().get_node_id(), pid, start, r))

    registry = Registry()
    ray.get([ray.remote(num_cpus=0)(rank).options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
             .remote(r, holders[r].pid, started[r], registry.queue) for r, n in enumerate(two_nodes)])  # one rank on each node
    processes = registry.drain()
    assert {p.node_id for p in processes} == {n.node_id for n in two_nodes}
    with pytest.raises(HandoverError, match=r"2 process\(es\).*train rank [01] \(stand-in\) \(pid \d+ on node \w+, GPU [01]\)"):
        wait_exited(processes, timeout_s=0.2)
    threading.Timer(1.0, go.touch).start()
    assert wait_exited(processes, timeout_s=60) > 0.5
    assert [still_running(p) for p in processes] == [None, None]
    for h in holders:
        h.wait()


def test_engines_wait_for_an_autoscaler_to_add_a_node_and_say_so(two_nodes):
    """Placement on an autoscaling cluster: the wait shows what is asked, free and launching, and is placed once a
    node joins (a real node added to the cluster; the autoscaler's report is a stand-in). With no autoscaler and too
    few GPUs in the cluster, nothing can change: refused at once. With one, refused after the limit."""
    import threading
    import time

    from ray.util.placement_group import placement_group, remove_placement_group

    from workers.engines.pool import Autoscaling, wait_placed
    from workers.types import PoolError

    launching = lambda: Autoscaling(launching=1, failed=0)  # noqa: E731 - the autoscaler's report, a stand-in
    what, need, fields = "3 engine(s) of {'GPU': 8} each (SPREAD)", {"GPU": 24.0}, "resources.engines"
    pg = placement_group([{"GPU": 8}] * 3, strategy="SPREAD")
    added: list = []
    try:
        t0 = time.monotonic()
        with pytest.raises(PoolError, match=r"cannot place 3 engine.*too few and no autoscaler runs.*asked 24 GPU: "
                                            r"16 GPU free of 16 GPU, no autoscaler running"):
            wait_placed(pg, what, need, 600, fields, poll_s=0.3)  # the cluster's own report: no autoscaler
        assert time.monotonic() - t0 < 60
        with pytest.raises(PoolError, match=r"not placed within 1s \(resources.placement_timeout_s\).*1 node\(s\) launching"):
            wait_placed(pg, what, need, 1, fields, poll_s=0.3, scaling=launching)
        lines: list[str] = []
        waited: list = []

        def wait() -> None:
            try:
                waited.append(wait_placed(pg, what, need, 120, fields, poll_s=0.3, scaling=launching, log=lines.append))
            except PoolError as e:
                waited.append(e)

        waiting = threading.Thread(target=wait)
        waiting.start()
        time.sleep(1.0)
        added.append(CLUSTER[0].add_node(num_cpus=8, num_gpus=8, node_ip_address="127.0.0.1"))  # the main thread's
        waiting.join()
        assert isinstance(waited[0], float) and waited[0] >= 1.0, waited
        assert lines and lines[0].startswith(f"  waiting for {what}: 24 GPU asked, 16 GPU free of 16 GPU, "
                                             "1 node(s) launching (0s of 120s)")
    finally:
        remove_placement_group(pg)
        for node in added:
            CLUSTER[0].remove_node(node)
