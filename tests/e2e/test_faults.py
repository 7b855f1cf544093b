"""Failures injected into real runs: the driver SIGKILLed at stage boundaries and inside stages (training
included), an engine process killed mid-generation. Every run must end with the same artifacts as an
uninterrupted run, no row lost or duplicated, and no committed work redone.
"""

import json
import signal

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.helpers import CONFIG, check_run_dir, selfreward
from workers.faults import KILL_AT_ENV, KILL_ENGINE_AT_ENV

pytestmark = pytest.mark.e2e

PROMPTS, SAMPLES, K = 2, 3, 2
EVALS = (2, 1)
FAST = [
    "iterations=2",
    f"data.prompts_per_iteration={PROMPTS}",
    f"generation.samples_per_prompt={SAMPLES}",
    "generation.max_tokens=24",
    f"judge.judge_samples={K}",
    "judge.max_tokens=32",
    f"eval.verifiable_prompts={EVALS[0]}",
    f"eval.instruction_prompts={EVALS[1]}",
    "eval.max_tokens=16",
    "resources.kv_cache_gib=1",
    # Small shards and a checkpoint per step: every stage has several parts to die between.
    "resources.shard_size=2",
    "dpo.micro_batch_pairs=1",
    "dpo.checkpoint_every=1",
]
# Where the driver is SIGKILLed, one run session after the other, in the same run dir.
# One point per mechanism: parts of an evaluation, of an engine stage that completes (generation) and of one that
# scores (their part files decode differently), a stage boundary, a training checkpoint, the boundary after an
# adapter is committed (the next session's fresh engine must prove it), and a checkpoint of a training stage that
# continues from the previous adapter.
KILLS = [
    "iter_000/eval:part",  # inside M0's evaluation
    "iter_001/generate:part",  # inside generation, after its first part
    "iter_001/generate",  # at the boundary
    "iter_001/score:part",
    "iter_001/train:step@2",  # inside training, after the checkpoint of step 2
    "iter_001/train",
    "iter_002/train:step",
]
# The session (its index in KILLS) whose engine is killed too: it resumes generation after one committed part.
ENGINE_KILLED = KILLS.index("iter_001/generate")
ARTIFACTS = ["generations", "judgments", "rewards", "pairs", "eval"]


def _run(run_dir, model, *extra, env=None):
    return selfreward("run", str(CONFIG), "--run-dir", str(run_dir), *FAST, f"model.path={model}", *extra, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path):
    """The uninterrupted run everything is compared with. It runs with colocation (on CPU the engines are shut down
    for each training stage and started again after it), the interrupted runs without: the results must not differ."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    res = _run(run_dir, tiny_model_path, "resources.colocate=true")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("engines shut down while the trainer runs") == 2
    assert res.stdout.count("engine pool: 1 engine(s) ready") == 3  # M0's evaluation, after training 1, after training 2
    return run_dir


def _sessions(run_dir):
    return json.loads((run_dir / "state.json").read_text())["sessions"]


def _assert_same_results(run_dir, reference, iterations=2):
    for t in range(iterations + 1):
        for name in ARTIFACTS if t else ["eval"]:
            a = pq.read_table(run_dir / f"iter_{t:03d}" / f"{name}.parquet")
            b = pq.read_table(reference / f"iter_{t:03d}" / f"{name}.parquet")
            assert a.equals(b), f"iter_{t:03d}/{name}.parquet differs from the uninterrupted run"
        if t:
            wa = load_file(run_dir / f"iter_{t:03d}" / "adapter" / "adapter_model.safetensors")
            wb = load_file(reference / f"iter_{t:03d}" / "adapter" / "adapter_model.safetensors")
            assert wa.keys() == wb.keys()
            for k in wa:  # same steps from the same state: equal up to float32 rounding
                torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def test_driver_killed_at_every_kind_of_point_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_path, reference):
    """Also an engine crash: in the session that finishes generation, the engine process is killed after the
    session's first part; Ray restarts it and the shard in flight is redone, each part committed once."""
    run_dir = tmp_path / "run"
    for i, point in enumerate(KILLS):
        env = {KILL_AT_ENV: point, **({KILL_ENGINE_AT_ENV: "iter_001/generate:part"} if i == ENGINE_KILLED else {})}
        res = _run(run_dir, tiny_model_path, env=env)
        assert res.returncode == -signal.SIGKILL, f"{point}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
        assert ("fault injection: killing engine 0" in res.stdout) == (i == ENGINE_KILLED), res.stdout[-2000:]
    final = _run(run_dir, tiny_model_path)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    check_run_dir(run_dir, 2, PROMPTS, SAMPLES, K, evals=EVALS)  # every key exactly once
    _assert_same_results(run_dir, reference)

    sessions = _sessions(run_dir)
    assert len(sessions) == len(KILLS) + 1
    # No committed work redone: every stage computed in exactly one session, every part committed once.
    computed = [k for s in sessions for k in s["stages_computed"]]
    assert len(computed) == len(set(computed))
    assert set(computed) == set(_sessions(reference)[0]["stages_computed"])
    parts: dict[str, int] = {}
    for s in sessions:
        for key, n in s["parts_computed"].items():
            parts[key] = parts.get(key, 0) + n
    assert parts == _sessions(reference)[0]["parts_computed"]
    # Sessions killed inside a stage left parts that the next session reused instead of redoing.
    reused_parts = {k for s in sessions for k in s["parts_reused"]}
    assert {"iter_000/eval", "iter_001/generate", "iter_001/score"} <= reused_parts
    # The driver died right after seeing the checkpoint of step 2 (iteration 1) and of step 1 (iteration 2) committed;
    # the train worker may commit the next one before it is torn down. The resume starts from the latest one.
    resumed = {k: v for s in sessions for k, v in s["train_resumed_from_step"].items()}
    assert set(resumed) == {"iter_001/train", "iter_002/train"}
    assert resumed["iter_001/train"] >= 2 and resumed["iter_002/train"] >= 1
    # Each kill happened where it was asked to: the stages committed before each point.
    reused = [set(s["stages_reused"]) for s in sessions]
    assert "iter_001/generate" in reused[3] and "iter_001/select" in reused[5] and "iter_002/select" in reused[7]


def _state(run_dir):
    return (run_dir / "state.json").read_bytes()


def test_damaged_run_dir_full_disk_and_nan_loss_are_clear_errors_that_lose_nothing(tmp_path, tiny_model_path, reference):
    import shutil

    from orchestrator.run.lock import RunLock
    from orchestrator.run.storage import Storage
    from workers.faults import FAIL_WRITE_ENV, NAN_AT_ENV

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    args = ["resources.train_max_failures=0"]  # a NaN is deterministic: no point in Ray Train retrying it

    def run(*extra, env=None):
        return selfreward("run", str(CONFIG), "--run-dir", str(run_dir), *FAST, f"model.path={tiny_model_path}", *args,
                          *extra, env=env)

    # Another process holds the run dir: refused before anything is touched.
    lock = RunLock(Storage(run_dir))
    lock.acquire()
    before = _state(run_dir)
    res = run()
    lock.release()
    assert res.returncode == 2 and "is in use by another run" in res.stderr and _state(run_dir) == before

    # Damaged artifacts and state: named, with the way out, and nothing changed.
    for victim, cut in [("iter_001/rewards.parquet", 100), ("iter_002/adapter/adapter_model.safetensors", 50), ("state.json", 40)]:
        path = run_dir / victim
        good = path.read_bytes()
        path.write_bytes(good[:-cut])
        damaged = path.read_bytes()
        res = run()
        assert res.returncode == 2, res.stderr[-2000:]
        assert victim.split("/")[-1] in res.stderr
        hint = "state.json.prev: copy it over" if victim == "state.json" else "rerun with --redo iter_00"
        assert hint in res.stderr, res.stderr[-2000:]
        assert path.read_bytes() == damaged
        path.write_bytes(good)

    # A disk that fills up while a stage commits: exit 1 naming the file; what was committed stays.
    adapter_1 = (run_dir / "iter_001" / "adapter" / "adapter_model.safetensors").read_bytes()
    res = run("--redo", "iter_002/select", env={FAIL_WRITE_ENV: "iter_002/pairs.parquet"})
    assert res.returncode == 1 and "No space left on device" in res.stderr and "iter_002/pairs.parquet" in res.stderr
    state = json.loads(_state(run_dir))["stages"]
    assert "iter_002/score" in state and "iter_002/select" not in state and "iter_002/train" not in state
    assert not list(run_dir.rglob(".*.tmp-*"))

    # A NaN loss stops training at that step; M(1) stays the current model and nothing of M(2) is committed.
    res = run(env={NAN_AT_ENV: "step@1"})
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "DPO loss is nan at optimizer step 1" in res.stderr and "no update was applied" in res.stderr
    state = json.loads(_state(run_dir))["stages"]
    assert "iter_002/select" in state and "iter_002/train" not in state
    assert (run_dir / "iter_001" / "adapter" / "adapter_model.safetensors").read_bytes() == adapter_1

    # The same command without the faults finishes, with the results of the uninterrupted run.
    res = run()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    _assert_same_results(run_dir, reference)
