"""The DPO trainer on Ray Train: DDP and FSDP over 2 CPU workers (gloo) equal 1 worker with accumulation (the
trainer in process, as one Ray Train worker runs it: the main job's golden run covers that launch)."""

import os

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tests import specs
from tests.workers.pairs_table import PAIRS, pairs_table
from workers.handover import still_running, wait_exited
from workers.training.launcher import run_training
from workers.training.trainer import DPOTrainerCore

pytestmark = pytest.mark.integration

def _pairs(path):
    pq.write_table(pairs_table(PAIRS, [1.0, 2.0, 0.5, 1.0]), path)
    return path


def test_two_workers_ddp_and_fsdp_equal_one_worker_with_accumulation(local_ray, tiny_random_model_path, tmp_path):
    pairs = _pairs(tmp_path / "pairs.parquet")
    results = {}
    for workers, accum, strategy in [(1, 2, "ddp"), (2, 1, "ddp"), (2, 1, "fsdp")]:
        out = tmp_path / f"adapter-{workers}-{strategy}"
        spec = specs.training(tiny_random_model_path, "dpo.learning_rate=2e-3", "dpo.micro_batch_pairs=1",
                              f"dpo.grad_accum_steps={accum}", "lora.target_modules=[q_proj, v_proj]",
                              "resources.torch_threads=1", f"resources.train_workers={workers}",
                              f"resources.train_strategy={strategy}", seed=3, pairs=pairs, out=out)
        if workers == 1:
            core = DPOTrainerCore(spec)
            res = core.fit(core.encode(pq.read_table(pairs)))
            core.save(out, res)
        else:
            res = run_training(spec, workers=workers, cpus_per_worker=1, gpus_per_worker=0,
                               storage_path=str(tmp_path / f"train-{workers}-{strategy}"))
            # Every rank registered its process for the hand-over; they exit (fit() does not wait for that).
            assert sorted(p.role for p in res.processes) == ["train rank 0", "train rank 1"]
            assert len({p.pid for p in res.processes}) == 2 and os.getpid() not in {p.pid for p in res.processes}
            wait_exited(res.processes, timeout_s=60)
            assert [still_running(p) for p in res.processes] == [None, None]
        results[(workers, strategy)] = (res, load_file(out / "adapter_model.safetensors"))
    r1, w1 = results[(1, "ddp")]
    # 4 pairs, 2 pairs per optimizer step -> 2 steps in every layout, over the same pairs.
    assert r1.steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert any(w1[k].abs().sum() > 0 for k in w1 if "lora_B" in k)
    for key in [(2, "ddp"), (2, "fsdp")]:
        r2, w2 = results[key]
        assert [s["pairs"] for s in r1.steps] == [s["pairs"] for s in r2.steps] == [2, 2], key
        for a, b in zip(r1.steps, r2.steps):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), key
        assert w1.keys() == w2.keys(), key
        for k in w1:
            torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)
