"""Mid-training resume: a training stage continued from a checkpoint ends exactly where the uninterrupted one does.

First on the plain trainer object (checkpoints in a local folder, training
stopped by an exception right after one is saved), then on Ray Train, where a
train worker process dies after a checkpoint and Ray Train restarts it from there.
"""

import json
import os
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from tests import specs
from tests.workers.pairs_table import PAIRS, pairs_table
from workers.faults import KILL_TRAIN_WORKER_AT_ENV
from workers.training.launcher import run_training
from workers.training.trainer import DPOTrainerCore

pytestmark = pytest.mark.integration

def _spec(model, *overrides, pairs="", out=""):
    # LoRA dropout and a warmup + cosine schedule: resuming must restore the RNG and the scheduler too.
    return specs.training(model, "dpo.learning_rate=3e-3", "dpo.micro_batch_pairs=1", "dpo.epochs=2", "lora.dropout=0.1",
                          "dpo.lr_schedule=cosine", "dpo.warmup_steps=2", "lora.target_modules=[q_proj, v_proj]",
                          "resources.torch_threads=1", *overrides, seed=5, pairs=pairs, out=out)


class Stop(Exception):
    pass


class FolderCheckpoints:
    """Checkpoints in a local folder; raises Stop right after saving step ``stop_at``."""

    def __init__(self, root: Path, every: int, stop_at: int | None = None) -> None:
        self.root, self.every, self.stop_at = root, every, stop_at

    def load(self, core):
        steps = sorted(int(p.name) for p in self.root.iterdir()) if self.root.exists() else []
        return core.load_checkpoint(self.root / str(steps[-1])) if steps else None

    def save(self, core, state, reference):
        d = self.root / str(state.step)
        d.mkdir(parents=True)
        core.save_checkpoint(d, state, reference)
        if state.step == self.stop_at:
            raise Stop


def _trainable(core):
    return {n: p.detach().clone() for n, p in core.model.named_parameters() if p.requires_grad}


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("stop_at", [3, 4], ids=["mid-epoch", "epoch-boundary"])
def test_resumed_fit_equals_uninterrupted_fit(tiny_random_model_path, tmp_path, stop_at, device):
    # On CUDA the LoRA dropout draws from the CUDA generator: the checkpoint must carry its state too.
    table = pairs_table(PAIRS)
    whole = DPOTrainerCore(_spec(tiny_random_model_path), device)
    expected = whole.fit(whole.encode(table))
    assert len(expected.steps) == 8

    first = DPOTrainerCore(_spec(tiny_random_model_path), device)
    with pytest.raises(Stop):
        first.fit(first.encode(table), checkpoints=FolderCheckpoints(tmp_path, 1, stop_at))
    if device == "cuda":
        assert "cuda_rng" in load_file(tmp_path / str(stop_at) / "tensors.safetensors")
    # A new trainer (as in a new process) continues from the latest checkpoint.
    again = DPOTrainerCore(_spec(tiny_random_model_path), device)
    got = again.fit(again.encode(table), checkpoints=FolderCheckpoints(tmp_path, 1))
    assert got.resumed_from_step == stop_at and expected.resumed_from_step == 0
    assert [s["step"] for s in got.steps] == list(range(1, 9))
    for a, b in zip(got.steps, expected.steps):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    wa, wb = _trainable(again), _trainable(whole)
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-7, rtol=0)
    assert again.scheduler.get_last_lr() == pytest.approx(whole.scheduler.get_last_lr())
    # Checkpoints hold no pickle: the optimizer state loads with weights_only=True (done by load_checkpoint).
    assert json.loads((tmp_path / str(stop_at) / "train_state.json").read_text())["step"] == stop_at


def test_a_checkpoint_of_another_model_is_refused(tiny_random_model_path, tmp_path):
    table = pairs_table(PAIRS[:1])
    core = DPOTrainerCore(_spec(tiny_random_model_path, "dpo.epochs=1"))
    with pytest.raises(Stop):
        core.fit(core.encode(table), checkpoints=FolderCheckpoints(tmp_path, 1, 1))
    other = DPOTrainerCore(_spec(tiny_random_model_path, "dpo.epochs=1", "lora.target_modules=[q_proj]"))
    other.make_scheduler(1)
    with pytest.raises(ValueError, match="other parameters"):
        other.load_checkpoint(tmp_path / "1")


@pytest.fixture(scope="module")
def ray_with_worker_fault():
    """A local Ray whose train workers see the fault: rank 0 exits right after committing step 2's checkpoint."""
    os.environ[KILL_TRAIN_WORKER_AT_ENV] = "step@2"
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()
    os.environ.pop(KILL_TRAIN_WORKER_AT_ENV)


def test_ray_train_restarts_a_dead_worker_from_its_checkpoint(ray_with_worker_fault, tiny_random_model_path, tmp_path):
    import pyarrow.parquet as pq

    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pairs_table(PAIRS), pairs)
    spec = _spec(tiny_random_model_path, "dpo.checkpoint_every=1", pairs=pairs, out=tmp_path / "adapter")
    result = run_training(spec, workers=1, cpus_per_worker=1, gpus_per_worker=0, storage_path=str(tmp_path / "train"),
                          max_failures=1)
    # Step 2's checkpoint was committed, then the worker died; the restarted worker went on from there.
    assert result.resumed_from_step == 2
    assert [s["step"] for s in result.steps] == list(range(1, 9))
    whole = DPOTrainerCore(_spec(tiny_random_model_path))
    expected = whole.fit(whole.encode(pairs_table(PAIRS)))
    whole.save(tmp_path / "expected", expected)
    got, want = load_file(tmp_path / "adapter" / "adapter_model.safetensors"), load_file(tmp_path / "expected" / "adapter_model.safetensors")
    # The Ray-restarted worker does not reproduce the in-process run bit for bit on every machine: on some 2-core
    # machines a few of its weights differ by 3e-6 to 1.1e-3 after 8 steps, from run to run, while the mean
    # difference stays near 5e-7 (cause not found; an open problem). A resume that lost its step, optimizer state or
    # dropout RNG moves nearly every weight by about an update (lr 3e-3 with Adam): the mean must stay below 1e-5.
    for k in want:
        diff = (got[k] - want[k]).abs()
        assert diff.mean().item() < 1e-5, (k, diff.max().item(), diff.mean().item())
    for a, b in zip(result.steps, expected.steps):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-3)


def test_a_nan_loss_stops_training_before_the_update(tiny_random_model_path, monkeypatch):
    from workers.faults import NAN_AT_ENV

    core = DPOTrainerCore(_spec(tiny_random_model_path, "dpo.epochs=1"))
    examples = core.encode(pairs_table(PAIRS))
    before = _trainable(core)
    monkeypatch.setenv(NAN_AT_ENV, "step@1")
    with pytest.raises(FloatingPointError, match=r"DPO loss is nan at optimizer step 1 .*no update was applied"):
        core.fit(examples)
    after = _trainable(core)
    for k in before:  # the weights are still the last good ones
        assert torch.equal(before[k], after[k]), k
