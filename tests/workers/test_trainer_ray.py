"""The DPO trainer on Ray Train: DDP over 2 CPU workers (gloo) equals 1 worker with accumulation."""

import pyarrow.parquet as pq
import pytest
import ray
import torch
from safetensors.torch import load_file

from tests.workers.pairs_table import pairs_table
from workers.trainer import TrainSpec, run_training

pytestmark = pytest.mark.integration

PAIRS = [
    ("What is 6 * 7?", "6 * 7 = 42.", "6 * 7 = 36."),
    ("Name a primary colour.", "Red is a primary colour.", "Colours are nice."),
    ("What is the capital of Italy?", "Rome.", "Italy is in Europe."),
    ("Is 9 a prime number?", "No, 9 = 3 * 3.", "Yes, 9 is prime."),
]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def _pairs(path):
    pq.write_table(pairs_table(PAIRS, [1.0, 2.0, 0.5, 1.0]), path)
    return path


def test_two_workers_equal_one_worker_with_accumulation(local_ray, tiny_model_path, tmp_path):
    pairs = _pairs(tmp_path / "pairs.parquet")
    results = {}
    for workers, accum in [(1, 2), (2, 1)]:
        out = tmp_path / f"adapter-{workers}"
        spec = TrainSpec(model_path=str(tiny_model_path), dtype="float32", pairs_path=str(pairs), output_dir=str(out),
                         learning_rate=2e-3, micro_batch_pairs=1, grad_accum_steps=accum, epochs=1, seed=3,
                         target_modules=("q_proj", "v_proj"), torch_threads=1)
        res = run_training(spec, workers=workers, cpus_per_worker=1, gpus_per_worker=0, storage_path=str(tmp_path / f"train-{workers}"))
        results[workers] = (res, load_file(out / "adapter_model.safetensors"))
    (r1, w1), (r2, w2) = results[1], results[2]
    # 4 pairs, 2 pairs per optimizer step -> 2 steps in both layouts, over the same pairs.
    assert [s["pairs"] for s in r1.steps] == [s["pairs"] for s in r2.steps] == [2, 2]
    for a, b in zip(r1.steps, r2.steps):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert r1.steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)
    assert any(w1[k].abs().sum() > 0 for k in w1 if "lora_B" in k)
