"""The GPU benchmark's code path (a tiny config on the CPU), and the HF engine on a GPU where there is one."""

import json
import os
import subprocess
import sys

import pytest

from tests import ROOT


@pytest.mark.integration
def test_gpu_benchmark_runs_its_whole_path_on_a_tiny_config(tmp_path):
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--steps", "2", "--pairs", "2", "--seq", "32",
                          "--gen-batch", "3", "--gen-tokens", "5"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "BENCHMARK_RESULTS": str(tmp_path)}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_smoke.json").read_text())
    smoke = out["models"]["smoke"]
    for mode in ("lora", "full"):
        assert smoke[mode]["losses_finite"] and smoke[mode]["tokens_per_s"] > 0 and smoke[mode]["flops_per_step"] > 0
    gen = smoke["generation"]
    assert 0 < gen["tokens"] <= 3 * 5 and gen["tokens_per_s"] > 0
    assert "not measured" in out["vllm"]


@pytest.mark.integration
def test_gpu_smoke_script_passes_every_check_on_the_cpu_path():
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--smoke"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["ok"] and out["train"]["steps"] == 3 and out["train"]["gradient_checkpointing"]
    # The colocated sequence in processes of their own: a second trainer continued from the served adapter, was
    # killed and waited for, the engine proved adapter 1 again after waking and served adapter 2.
    assert out["train_again"]["ok"] and out["train_again"]["pid"] != out["train"]["pid"]
    assert out["adapter_served"] and out["adapter_changes_output"] and out["adapter2_served"]
    assert out["handover"] and out["handover_s"] >= 0 and out["reproved_after_wake"] and out["reprove_s"] > 0
    assert out["sleep_wake_identical"] == ("not applicable" if out["device"] == "cpu" else True)
    assert out["train"].get("peak_rss_gib", out["train"].get("peak_allocated_gib")) > 0 and out["engine_peak_rss_gib"] > 0


@pytest.mark.gpu
@pytest.mark.integration
def test_hf_engine_on_a_gpu_is_seeded_and_survives_sleep(tiny_model_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from tests import specs
    from workers.engines.hf import HFEngine
    from workers.types import CompletionRequest, SamplingSpec

    engine = HFEngine(specs.engine(tiny_model_path, "model.max_model_len=1024", "resources.kv_cache_gib=1"))
    assert engine.device.type == "cuda"
    reqs = [CompletionRequest("Name the capital of France.", 1), CompletionRequest("What is 2 + 2?", 2)]
    greedy = engine.complete(reqs, SamplingSpec(0.0, 1.0, 16), None)
    assert all(c.num_tokens > 0 for c in greedy)
    assert engine.complete(reqs, SamplingSpec(1.0, 0.9, 16), None) == engine.complete(reqs, SamplingSpec(1.0, 0.9, 16), None)
    engine.sleep()
    engine.wake()
    assert engine.complete(reqs, SamplingSpec(0.0, 1.0, 16), None) == greedy
