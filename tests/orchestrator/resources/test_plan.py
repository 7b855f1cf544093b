"""`selfreward plan`: parameter counts, memory estimates, the cluster's GPUs, and refusals naming the field."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.models import safetensors_names
from orchestrator.resources.plan import GIB, Hardware, ModelShape, PlanError, cluster_hardware, make_plan, model_shape
from tests import ROOT

LLAMA8B = ROOT / "jobs" / "models" / "llama-3.1-8b-instruct.config.json"
CLUSTER = ROOT / "cluster.yaml"
SCALED = [ROOT / "jobs" / "configs" / "llama8b-1x8gpu.yaml", ROOT / "jobs" / "configs" / "llama8b-2x8gpu.yaml"]
A100_NODES = Hardware(2, 8, 39.4, "A100 40GB", "two test nodes")


def test_llama_8b_has_its_published_parameter_count_and_kv_size():
    s = model_shape("unused", LLAMA8B)
    assert s.params == 8_030_261_248
    assert s.kv_bytes_per_token(2, 1) == 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 KV heads of 128, bf16
    assert s.kv_bytes_per_token(2, 2) == s.kv_bytes_per_token(2, 1) // 2  # KV heads split over 2 GPUs
    assert s.kv_bytes_per_token(2, 16) == 2 * 32 * 1 * 128 * 2  # fewer KV heads than GPUs: replicated


def test_the_parameter_count_matches_the_weights_of_the_default_model(tmp_path):
    from orchestrator.models import resolve_model_path

    folder = resolve_model_path("default")
    shape = model_shape(folder)
    header = {}
    for f in sorted(folder.glob("*.safetensors")):
        safetensors_names(f)  # the header is checked against the file first
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header.update({k: v for k, v in json.loads(raw[8 : 8 + n]).items() if k != "__metadata__"})
    counted = sum(int(__import__("math").prod(v["shape"])) for v in header.values())
    assert shape.tied and shape.params == counted


def test_lora_parameters_follow_the_target_modules():
    s = model_shape("unused", LLAMA8B)
    qv = s.lora_params(16, ("q_proj", "v_proj"))
    assert qv == 32 * 16 * ((4096 + 4096) + (4096 + 1024))
    assert s.lora_params(16) > s.lora_params(16, ("q_proj", "k_proj", "v_proj", "o_proj")) > qv


def test_cluster_yaml_declares_a100_nodes():
    hw = cluster_hardware(CLUSTER)
    spec = yaml.safe_load(CLUSTER.read_text())
    assert hw.gpus_per_node == 8 and hw.gpu_memory_gib == pytest.approx(39.4)
    assert hw.nodes == spec["available_node_types"]["gpu_8x"]["max_workers"]


def test_an_unknown_gpu_instance_type_is_named(tmp_path):
    spec = yaml.safe_load(CLUSTER.read_text())
    spec["available_node_types"]["gpu_8x"]["node_config"]["InstanceType"] = "x9.gpu"
    spec["available_node_types"]["gpu_8x"]["resources"] = {"GPU": 4}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(PlanError, match="gpu_8x.*'x9.gpu'"):
        cluster_hardware(path)


@pytest.mark.parametrize("config", SCALED, ids=lambda p: p.stem)
def test_the_shipped_scaled_configs_fit_the_cluster_they_are_written_for(config):
    plan = make_plan(load_config(config), model_shape("unused", LLAMA8B), cluster_hardware(CLUSTER))
    assert plan.problems == ()
    assert plan.kv_tokens >= 4 * 4096  # several full-length requests at once, not one
    assert all(b.fits for b in plan.budgets)
    plan.check()


def test_the_old_colocated_config_is_refused_for_its_kv_cache_and_its_training_memory():
    cfg = load_config(SCALED[0], ["resources.colocate_engine_gpu_fraction=0.5", "resources.gradient_checkpointing=false"])
    plan = make_plan(cfg, model_shape("unused", LLAMA8B), A100_NODES)
    text = "\n".join(plan.problems)
    assert "resources.colocate_engine_gpu_fraction" in text and "less than one request of model.max_model_len=4096" in text
    assert "resources.gradient_checkpointing" in text
    with pytest.raises(PlanError):
        plan.check()


def test_gradient_checkpointing_and_fsdp_shrink_the_training_estimate():
    shape = model_shape("unused", LLAMA8B)

    def train_gib(*overrides):
        plan = make_plan(load_config(SCALED[1], list(overrides)), shape, A100_NODES)
        return next(b for b in plan.budgets if b.title.startswith("train")).total

    plain = train_gib("resources.gradient_checkpointing=false")
    checkpointed = train_gib("resources.gradient_checkpointing=true")
    sharded = train_gib("resources.gradient_checkpointing=true", "resources.train_strategy=fsdp")
    assert plain > checkpointed + 20 and checkpointed > sharded + 10


def test_more_gpus_than_the_cluster_has_are_refused():
    cfg = load_config(SCALED[1], ["resources.engines=16", "resources.train_workers=32"])
    plan = make_plan(cfg, model_shape("unused", LLAMA8B), Hardware(1, 8, 79.1, "H100", "one node"))
    assert any(p.startswith("resources.engines") and "holds 32 GPUs at once" in p and "has 8" in p
               for p in plan.problems)
    wide = make_plan(load_config(SCALED[1], ["resources.gpus_per_engine=16", "resources.engines=1"]),
                     model_shape("unused", LLAMA8B), A100_NODES)
    assert any("resources.gpus_per_engine=16: a tensor-parallel engine lives on one node" in p for p in wide.problems)


def test_mc_dropout_runs_in_the_engines_sleep_window_and_the_plan_says_so():
    """Beside an awake 8B engine a copy of the model does not fit (9.3 GiB left of 39.4 for 20.4): on colocated GPU
    engines MC-dropout runs while they sleep, with the room a train step has; the plan says where it runs, or that
    it is off."""
    shape = model_shape("unused", LLAMA8B)
    for path in SCALED:
        off = make_plan(load_config(path), shape, A100_NODES)
        assert "MC-dropout off (selection.mc_dropout.passes=0)" in dict((s, w) for s, _, w in off.stages)["score"]
        on = make_plan(load_config(path, ["selection.mc_dropout.passes=4"]), shape, A100_NODES)
        assert not on.problems, on.problems
        assert "MC-dropout on engine 0's GPU while the engines sleep" in dict((s, w) for s, _, w in on.stages)["score"]
        (mc,) = [b for b in on.budgets if b.title.startswith("MC-dropout")]
        assert mc.room_gib == pytest.approx(39.4 - 2.5) and 16.5 < mc.total < mc.room_gib
    # Too long a context for the logits of a chunk: refused naming the field.
    long = make_plan(load_config(SCALED[0], ["selection.mc_dropout.passes=4", "dpo.micro_batch_pairs=16"]), shape,
                     A100_NODES)
    assert any(p.startswith("selection.mc_dropout") for p in long.problems)


def test_plan_says_when_the_cluster_starts_with_fewer_gpu_nodes_than_the_run_needs(capsys):
    assert cluster_hardware(CLUSTER).started_nodes == 1  # gpu_8x: min_workers 1
    for path, says in [(SCALED[0], False), (SCALED[1], True)]:
        assert main(["plan", str(path), "--cluster", str(CLUSTER), "--model-config", str(LLAMA8B)]) == 0
        out = capsys.readouterr().out
        line = "autoscaling: the cluster starts with 1 GPU node(s) (min_workers); the run needs 2: the engines wait "
        assert (line in out) == says, out
        assert ("resources.placement_timeout_s=3600s" in out) == says


def test_a_cpu_kv_cache_too_small_for_one_request_is_refused():
    shape = ModelShape(layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128, intermediate=28672, vocab=128256,
                       tied=False)
    cfg = load_config(None, ["model.max_model_len=8192", "resources.kv_cache_gib=1"])
    plan = make_plan(cfg, shape, Hardware(1, 0, 0.0, "none", "cpu"))
    assert plan.kv_tokens == int(GIB // shape.kv_bytes_per_token(4, 1))
    assert any(p.startswith("resources.kv_cache_gib=1") for p in plan.problems)


def test_plan_cli_prints_the_plan_and_exits_2_naming_the_field(capsys):
    args = [str(SCALED[0]), "--cluster", str(CLUSTER), "--model-config", str(LLAMA8B)]
    assert main(["plan", *args]) == 0
    out = capsys.readouterr().out
    assert "plan: fits" in out and "KV cache per engine" in out and "train worker" in out
    assert main(["plan", *args, "resources.colocate_engine_gpu_fraction=0.5"]) == 2
    captured = capsys.readouterr()
    assert "REFUSED" in captured.out and "resources.colocate_engine_gpu_fraction" in captured.err
    assert "Traceback" not in captured.err
    assert main(["plan", str(SCALED[0]), "--model-config", str(LLAMA8B.with_name("missing.json"))]) == 2
    assert "missing.json" in capsys.readouterr().err


def _a100() -> tuple[str, float]:
    """What the probe task reports on an A100 40GB (the Ray here has fake GPUs, no CUDA)."""
    return "NVIDIA A100-SXM4-40GB", 39.4


@pytest.mark.integration  # a Ray with fake GPUs
def test_run_checks_the_memory_plan_on_the_clusters_gpus_before_engines_start(tmp_path, caplog):
    import ray

    from orchestrator.resources.plan import check_on_cluster

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(LLAMA8B.read_text())
    ray.init(address="local", num_cpus=2, num_gpus=8, include_dashboard=False, _node_ip_address="127.0.0.1")
    caplog.set_level(logging.INFO, logger="orchestrator")

    def lines():
        return [r.getMessage() for r in caplog.records if r.name == "orchestrator.resources.plan"]

    try:
        check_on_cluster(load_config(SCALED[0]), model, probe=_a100)
        assert lines() and "plan: fits NVIDIA A100-SXM4-40GB (39.4 GiB), KV cache" in lines()[0]
        old = load_config(SCALED[0], ["resources.colocate_engine_gpu_fraction=0.5"])
        with pytest.raises(PlanError, match="resources.colocate_engine_gpu_fraction"):
            check_on_cluster(old, model, probe=_a100)
        # A Ray with fake GPUs has no CUDA: nothing measured, said so, nothing refused.
        check_on_cluster(old, model)
        assert "GPU memory not measured (no CUDA device); memory not checked" in lines()[-1]
        # A CPU run asks nothing of the cluster.
        check_on_cluster(load_config(None), model, probe=_a100)
        assert len(lines()) == 2
    finally:
        ray.shutdown()


def test_colocated_gpu_train_workers_need_cpus_beside_the_sleeping_engines(monkeypatch):
    """Sleeping GPU engines keep their bundles' CPUs and the borrowing train workers ask for their own; colocated CPU
    engines shut down, so there only the larger of the two counts."""
    from orchestrator.cli import _check_cluster
    from orchestrator.config import ConfigError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    cpus = ["resources.colocate=true", "resources.cpus_per_engine=1.5", "resources.cpus_per_train_worker=1.5"]
    _check_cluster(load_config(None, cpus))  # CPU engines: 1.5 at once
    gpu = load_config(None, cpus + ["resources.gpus_per_engine=1", "resources.gpus_per_train_worker=1"])
    with pytest.raises(ConfigError, match="need 3 CPUs at once"):
        _check_cluster(gpu)
