"""The driver (orchestrator.loop) against the stand-in backend (tests/orchestrator/standins.py): the whole loop in
seconds, with no Ray and no engine. Committed stages skipped, redo, the session records, the metrics, and the
driver SIGKILLed at every stage and part boundary: after any sequence of kills and resumes, the run's artifacts are
byte-identical to an uninterrupted run's, with no stage or part computed twice.

Each session runs in a process of its own (forked from a server that has imported the driver), so a kill is a real
SIGKILL of the driver: no ``finally`` runs, the run dir's lock is left behind, half-written files stay.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import loop
from orchestrator.config import ConfigError, load_config
from orchestrator.run.lock import RunLock
from orchestrator.run.rundir import RunDirError
from tests.e2e.helpers import CONFIG, check_run_dir
from tests.orchestrator import driver_session
from tests.orchestrator.standins import WEIGHTS, StandInBackend
from workers import faults
from workers.handover import HandoverError
from workers.storage import Storage
from workers.types import TrainingError

PROMPTS, SAMPLES, K, EVALS = 3, 3, 2, (3, 2)
SMALL = [
    f"data.prompts_per_iteration={PROMPTS}",
    f"generation.samples_per_prompt={SAMPLES}",
    f"judge.judge_samples={K}",
    f"eval.verifiable_prompts={EVALS[0]}",
    f"eval.instruction_prompts={EVALS[1]}",
    # Small shards and a checkpoint per step: every stage has several parts to die between.
    "resources.shard_size=4",
    "dpo.micro_batch_pairs=1",
    "dpo.checkpoint_every=1",
]
# What a resumed run must reproduce byte for byte: every table and every adapter file.
RESULTS = ("iter_*/*.parquet", "iter_*/adapter/*")


def results(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for pattern in RESULTS for p in sorted(run_dir.glob(pattern))}


def sessions(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "state.json").read_text())["sessions"]


def stages(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())["stages"]


_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["tests.orchestrator.driver_session"])


def session(overrides: list[str], run_dir: Path, kill_at: str | None = None, redo: str | None = None,
            branch_from: str | None = None) -> int:
    """The exit code of one driver session in a process of its own: 0, or -SIGKILL where it was killed."""
    p = _FORKS.Process(target=driver_session.session, args=(overrides, str(run_dir), kill_at, redo, branch_from))
    p.start()
    p.join()
    return p.exitcode


@pytest.fixture(scope="module")
def overrides(tiny_random_model_path):
    return [*SMALL, f"model.path={tiny_random_model_path}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, overrides):
    """An uninterrupted run, in this process, with every fault point it passed (in order)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    reached: list[str] = []
    real = faults.point
    faults.point = reached.append
    try:
        backend = StandInBackend()
        metrics = loop.run(load_config(CONFIG, overrides), run_dir, backend=backend)
    finally:
        faults.point = real
    return run_dir, reached, metrics, backend


def test_a_run_commits_every_artifact_to_its_contract(reference):
    run_dir, reached, metrics, backend = reference
    state = check_run_dir(run_dir, 2, PROMPTS, SAMPLES, K, evals=EVALS)
    assert [m["iteration"] for m in metrics] == [1, 2]
    # One pool for the whole run (no colocation), one training per iteration, each adapter proven before its use.
    assert len(backend.pools) == 1 and len(backend.trained) == 2
    assert {a.name for a in backend.pools[0].engine.proven} == {"iter_001", "iter_002"}  # M2 is evaluated
    (only,) = sessions(run_dir)
    assert not only["stages_reused"] and set(only["stages_computed"]) == set(state["stages"])
    # Every stage and every part passed a kill point: the property below draws from these.
    assert {p for p in reached if ":" not in p} == set(state["stages"])
    assert {"iter_000/eval:part", "iter_001/generate:part", "iter_002/train:step"} <= set(reached)


def test_colocated_engines_start_again_only_once_the_trainers_processes_have_exited(overrides, tmp_path):
    """The hand-over (workers.handover) with a stand-in trainer whose process outlives its fit() by 1.5 s."""
    colocated = [*overrides, "iterations=1", "resources.colocate=true"]
    backend = StandInBackend(linger_s=1.5)
    loop.run(load_config(CONFIG, colocated), tmp_path / "run", backend=backend)
    assert len(backend.lingering) == 1 and len(backend.pools) == 2  # engines shut down for training, started again
    assert backend.running_at_pool_start == [[], []]  # ... after the trainer's process had exited

    # A process that holds on past resources.handover_timeout_s: the error names it; the adapter stays committed.
    backend = StandInBackend(linger_s=60)
    with pytest.raises(HandoverError, match=r"train rank 0 \(stand-in\) \(pid (\d+) on node local\), (running|sleeping)"):
        loop.run(load_config(CONFIG, [*colocated, "resources.handover_timeout_s=0.5"]), tmp_path / "slow", backend=backend)
    os.kill(backend.lingering[0].pid, signal.SIGKILL)
    assert stages(tmp_path / "slow")["iter_001/train"]
    backend = StandInBackend()
    loop.run(load_config(CONFIG, [*colocated, "resources.handover_timeout_s=0.5"]), tmp_path / "slow", backend=backend)
    assert not backend.trained  # resumed after the committed training


def test_status_json_lists_every_stage_checked_and_the_metrics(reference, capsys):
    from orchestrator.cli import main

    assert main(["status", str(reference[0]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stages"].keys() == stages(reference[0]).keys() and {s["check"] for s in out["stages"].values()} == {"ok"}
    assert [m["iteration"] for m in out["metrics"]] == [0, 1, 2] and out["branched_from"] is None


def test_export_pairs_writes_a_trl_ready_dataset_with_every_trust_column(reference, tmp_path, capsys):
    import datasets

    from orchestrator.cli import main

    run_dir = reference[0]
    assert main(["export-pairs", str(run_dir), "--out", str(tmp_path / "all")]) == 0
    assert main(["export-pairs", str(run_dir), "--out", str(tmp_path / "kept"), "--kept-only", "--iterations", "2"]) == 0
    every, kept = datasets.load_from_disk(str(tmp_path / "all")), datasets.load_from_disk(str(tmp_path / "kept"))
    assert list(every) == ["iter_001", "iter_002"] and list(kept) == ["iter_002"]
    pairs = pq.read_table(run_dir / "iter_002/pairs.parquet").to_pylist()
    real = [p for p in pairs if p["chosen"] is not None]
    assert every["iter_002"].num_rows == len(real) and kept["iter_002"].num_rows == sum(p["kept"] for p in real)
    row, first = every["iter_002"][0], real[0]
    assert row["prompt"] == [{"role": "user", "content": first["prompt"]}]
    assert row["chosen"] == [{"role": "assistant", "content": first["chosen"]}]
    assert row["rejected"] == [{"role": "assistant", "content": first["rejected"]}]
    assert {k: row[k] for k in ("weight", "kept", "label_p", "chosen_correct", "margin")} == {
        k: first[k] for k in ("weight", "kept", "label_p", "chosen_correct", "margin")}
    capsys.readouterr()
    for argv, named in (([str(tmp_path / "all")], "exists and is not an empty folder"),
                        ([str(tmp_path / "new"), "--iterations", "7"], "no committed pairs for iteration(s) 7"),
                        ([str(tmp_path / "new"), "--iterations", "one"], "expected comma-separated")):
        assert main(["export-pairs", str(run_dir), "--out", *argv]) == 2
        assert named in capsys.readouterr().err and not (tmp_path / "new").exists()
    trl = pytest.importorskip("trl", reason="TRL is the bench extra")
    from trl.data_utils import is_conversational, maybe_apply_chat_template  # TRL's own DPO data preparation

    assert is_conversational(row)
    assert "chosen" in maybe_apply_chat_template(row, _tokenizer(trl))


def _tokenizer(_):
    from transformers import AutoTokenizer

    from orchestrator.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("default"), trust_remote_code=False)


def test_every_metric_reaches_mlflow_once_also_across_a_resume(overrides, tmp_path):
    """tracking.mlflow_uri: the run is one MLflow run (its config as parameters), every declared metric of every
    iteration with its interval is read back by MLflow's own client, and resuming sends no point twice."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracked = [*overrides, f"tracking.mlflow_uri={uri}", "tracking.experiment=tracking-test"]
    run_dir = tmp_path / "run"
    loop.run(load_config(CONFIG, [*tracked, "iterations=1"]), run_dir, backend=StandInBackend())
    loop.run(load_config(CONFIG, tracked), run_dir, backend=StandInBackend())  # resumed for a second iteration
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id])
    assert run.data.tags["selfreward.run_dir"] == str(run_dir) and run.info.status == "FINISHED"
    assert run.data.params["dpo.beta"] == "0.1" and run.data.params["seed"] == "0"
    accuracy = client.get_metric_history(run.info.run_id, "eval/accuracy")
    rows = {r["iteration"]: r for r in (json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] != "train_step"}
    assert sorted((m.step, m.value) for m in accuracy) == [(t, rows[t]["eval_accuracy"]["value"]) for t in (0, 1, 2)]
    assert len(client.get_metric_history(run.info.run_id, "eval/accuracy/ci95_lo")) == 3
    assert len(client.get_metric_history(run.info.run_id, "step/loss")) == sum(
        r["optimizer_steps"] for r in rows.values() if r["iteration"])
    import importlib.util

    real = importlib.util.find_spec
    with pytest.raises(ConfigError, match="tracking.wandb_project is set .* wandb package is not installed"):
        importlib.util.find_spec = lambda name, *a: None if name == "wandb" else real(name, *a)
        try:
            loop.prepare(load_config(CONFIG, [*overrides, "tracking.wandb_project=p"]), tmp_path / "other")
        finally:
            importlib.util.find_spec = real


def test_every_metric_reaches_wandb_offline_once_also_across_a_resume(overrides, tmp_path, monkeypatch):
    """tracking.wandb_project in offline mode: the run's files under RUN_DIR/wandb/, each declared metric once per
    iteration (its history read back from W&B's own offline run file), one W&B run across a resume."""
    pytest.importorskip("wandb", reason="W&B is the wandb extra")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_SILENT", "true")
    tracked = [*overrides, "tracking.wandb_project=selfreward-test"]
    run_dir = tmp_path / "run"
    loop.run(load_config(CONFIG, [*tracked, "iterations=1"]), run_dir, backend=StandInBackend())
    loop.run(load_config(CONFIG, tracked), run_dir, backend=StandInBackend())
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]["run_id"]
    assert files and all(run_id in str(f) for f in files)
    logged = []
    for f in files:
        for data in _wandb_records(f):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                if "eval/accuracy" in items:
                    logged.append((items["iteration"], items["eval/accuracy"]))
    rows = {r["iteration"]: r for r in (json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] != "train_step"}
    assert sorted(logged) == [(t, rows[t]["eval_accuracy"]["value"]) for t in (0, 1, 2)]


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B run file: a 7-byte header (":W&B", magic, version), then LevelDB's log format (32 KiB
    blocks of chunks, each with a 7-byte header: crc32c, little-endian length, type FULL/FIRST/MIDDLE/LAST)."""
    data, block, pos, out, pending = path.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind in (2, 3):
            pending = (b"" if kind == 2 else pending) + chunk
        elif kind == 4:
            out.append(pending + chunk)
    return out


def test_a_finished_run_resumes_without_starting_anything(reference, overrides, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    before = stages(run_dir)
    backend = StandInBackend()
    loop.run(load_config(CONFIG, overrides), run_dir, backend=backend)
    assert backend.pools == [] and backend.trained == []
    assert stages(run_dir) == before and results(run_dir) == results(reference[0])
    last = sessions(run_dir)[-1]
    assert not last["stages_computed"] and set(last["stages_reused"]) == set(before)


def test_redo_recomputes_that_stage_and_every_one_after_it(reference, overrides, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    assert session(overrides, run_dir, redo="iter_002/judge") == 0
    last = sessions(run_dir)[-1]
    assert set(last["stages_computed"]) == {f"iter_002/{s}" for s in ("judge", "score", "select", "train", "eval",
                                                                        "metrics")}
    assert results(run_dir) == results(reference[0])  # the same inputs give the same results


def test_a_config_change_that_alters_results_is_refused(reference, overrides, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    before = (run_dir / "state.json").read_bytes()
    with pytest.raises(RunDirError, match="dpo.beta"):
        loop.run(load_config(CONFIG, [*overrides, "dpo.beta=0.5"]), run_dir, backend=StandInBackend())
    assert (run_dir / "state.json").read_bytes() == before


def test_the_metrics_carry_every_stage_summary(reference):
    run_dir, _, metrics, _ = reference
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train_step"]
    assert len(steps) == sum(m["optimizer_steps"] for m in metrics) and all(m["optimizer_steps"] > 0 for m in metrics)
    for m in metrics:
        assert set(m["stage_seconds"]) == {"generate", "judge", "score", "select", "train", "eval"}
        assert m["judge_parse_rate"]["n"] == PROMPTS * SAMPLES * K
        assert m["eval_accuracy"]["n"] == EVALS[0]


def test_a_run_dir_in_use_or_damaged_is_refused_before_anything_starts_or_changes(reference, overrides, tmp_path):
    """The checks that need no engine: made by ``prepare`` (before the CLI starts Ray), naming the file and the way
    out, with nothing started and not a byte changed."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    cfg = load_config(CONFIG, overrides)

    def refused(match: str) -> None:
        before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        backend = StandInBackend()
        with pytest.raises(RunDirError, match=match):
            loop.run(cfg, run_dir, backend=backend)
        assert backend.pools == [] and backend.trained == []
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    lock = RunLock(Storage(run_dir))
    lock.acquire()
    refused("is in use by another run")
    lock.release()
    for victim, cut in [("iter_001/rewards.parquet", 100), ("iter_002/adapter/" + WEIGHTS, 50), ("state.json", 40)]:
        path = run_dir / victim
        good = path.read_bytes()
        path.write_bytes(good[:-cut])
        hint = "state.json.prev: copy it over" if victim == "state.json" else f"rerun with --redo {victim[:8]}/"
        refused(rf"(?s){re.escape(victim.split('/')[-1])}.*{re.escape(hint)}")
        path.write_bytes(good)


def test_a_full_disk_or_a_failed_training_loses_nothing_committed(reference, overrides, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    cfg = load_config(CONFIG, overrides)
    adapter_1 = (run_dir / "iter_001" / "adapter" / WEIGHTS).read_bytes()

    # A disk that fills up while a stage commits: the error names the file; what was committed stays.
    monkeypatch.setenv(faults.FAIL_WRITE_ENV, "iter_002/pairs.parquet")
    with pytest.raises(OSError, match="(?s)cannot write .*iter_002/pairs.parquet: No space left on device"):
        loop.run(cfg, run_dir, redo="iter_002/select", backend=StandInBackend())
    monkeypatch.delenv(faults.FAIL_WRITE_ENV)
    committed = stages(run_dir)
    assert "iter_002/score" in committed and "iter_002/select" not in committed and "iter_002/train" not in committed
    assert not list(run_dir.rglob(".*.tmp-*"))

    # Training that fails (a NaN loss) commits nothing of M(2); M(1) stays the current model.
    monkeypatch.setenv(faults.NAN_AT_ENV, "step@2")
    with pytest.raises(TrainingError, match="DPO loss is nan at optimizer step 2"):
        loop.run(cfg, run_dir, backend=StandInBackend())
    monkeypatch.delenv(faults.NAN_AT_ENV)
    committed = stages(run_dir)
    assert "iter_002/select" in committed and "iter_002/train" not in committed
    assert (run_dir / "iter_001" / "adapter" / WEIGHTS).read_bytes() == adapter_1

    # The same command without the faults finishes, with the results of the uninterrupted run.
    loop.run(cfg, run_dir, backend=StandInBackend())
    assert results(run_dir) == results(reference[0])


def _kill_points(reached: list[str]) -> list[str]:
    """Each point of the reference run as ``name@n`` (its n-th passage)."""
    seen: dict[str, int] = {}
    out = []
    for p in reached:
        seen[p] = seen.get(p, 0) + 1
        out.append(f"{p}@{seen[p]}")
    return out


@pytest.fixture(scope="module")
def kill_points(reference):
    return _kill_points(reference[1])


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_killed_anywhere_any_number_of_times_the_run_resumes_to_the_uninterrupted_result(
        data, reference, kill_points, overrides, tmp_path_factory):
    kills = data.draw(st.lists(st.sampled_from(kill_points), min_size=1, max_size=3), label="kills")
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    codes = [session(overrides, run_dir, kill_at=k) for k in kills]
    # A session dies where it is told to, unless an earlier session already committed past that point.
    assert codes[0] == -signal.SIGKILL and set(codes) <= {0, -signal.SIGKILL}
    assert session(overrides, run_dir) == 0
    ref_dir = reference[0]
    assert results(run_dir) == results(ref_dir)
    assert stages(run_dir).keys() == stages(ref_dir).keys()
    # No committed work redone: every stage computed in exactly one session, every part committed once.
    computed = [k for s in sessions(run_dir) for k in s["stages_computed"]]
    assert sorted(computed) == sorted(sessions(ref_dir)[0]["stages_computed"])
    parts: dict[str, int] = {}
    for s in sessions(run_dir):
        for key, n in s["parts_computed"].items():
            parts[key] = parts.get(key, 0) + n
    assert parts == sessions(ref_dir)[0]["parts_computed"]


# --- branches (orchestrator.run.branch) -------------------------------------------------------------------------
SHARED = ("iter_000/eval", "iter_000/metrics", "iter_001/generate", "iter_001/judge", "iter_001/score")


def _inode(path: Path) -> tuple[int, int]:
    st_ = path.stat()
    return st_.st_dev, st_.st_ino


def test_a_branch_shares_the_stages_up_to_its_point_by_link_and_sha256_then_runs_like_any_run(
        reference, overrides, tmp_path):
    source, branch = tmp_path / "source", tmp_path / "branch"
    shutil.copytree(reference[0], source)
    backend = StandInBackend()
    loop.run(load_config(CONFIG, overrides), branch, backend=backend, branch_from=f"{source}@iter_001/score")
    ours, theirs = stages(branch), stages(source)
    assert ours.keys() == theirs.keys()
    for key in SHARED:  # the same record, and the very same file (a hard link, nothing copied)
        assert ours[key] == theirs[key]
        assert _inode(branch / ours[key]["artifact"]) == _inode(source / theirs[key]["artifact"])
    (only,) = sessions(branch)
    assert only["stages_shared"] == {k: "linked" for k in SHARED}
    assert set(only["stages_computed"]) == set(theirs) - set(SHARED)
    assert json.loads((branch / "state.json").read_text())["branched_from"]["stage"] == "iter_001/score"
    # The same config from the same inputs: what the branch computed is what the source computed.
    assert results(branch) == results(source)
    # It resumes like any run, with its --from or without, and outlives the source.
    assert session(overrides, branch, branch_from=f"{source}@iter_001/score") == 0
    shutil.rmtree(source)
    assert session(overrides, branch) == 0 and session(overrides, branch, branch_from=f"{source}@iter_001/score") == 0
    assert not any(s["stages_computed"] for s in sessions(branch)[1:]) and results(branch) == results(reference[0])


def test_a_branch_may_change_what_only_later_stages_read_and_nothing_else(reference, overrides, tmp_path):
    source = reference[0]
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    # The selection is read from the select stage on: a branch after score may change it.
    branch = tmp_path / "random"
    loop.run(load_config(CONFIG, [*overrides, "selection.rank_by=random"]), branch, backend=StandInBackend(),
             branch_from=f"{source}@iter_001/score")
    assert all(stages(branch)[k] == stages(source)[k] for k in SHARED)
    assert pq.read_table(branch / "iter_001/pairs.parquet") != pq.read_table(source / "iter_001/pairs.parquet")
    # What a shared stage reads may not change: refused before anything is created, naming field and stage.
    for change, where, stage in (("judge.judge_samples=3", "iter_001/score", "iter_001/judge"),
                                 ("generation.temperature=0.5", "iter_001/judge", "iter_001/generate"),
                                 ("dpo.beta=0.3", "iter_001/select", "iter_001/select"),
                                 ("seed=7", "iter_000/eval", "iter_000/eval")):
        refused = tmp_path / f"refused-{change.split('=')[0]}"
        with pytest.raises(RunDirError, match=rf"(?s){re.escape(change.split('=')[0])}: .* read by {stage}"):
            loop.run(load_config(CONFIG, [*overrides, change]), refused, backend=StandInBackend(),
                     branch_from=f"{source}@{where}")
        assert not refused.exists()
    for bad, match in ((f"{source}@iter_003/score", r"not a committed stage .*\(committed: iter_000/eval"),
                       (f"{tmp_path}/nowhere@iter_001/score", "no state.json"),
                       (f"{branch}@iter_001/score", "that is the run dir itself")):
        with pytest.raises(RunDirError, match=match):
            loop.run(load_config(CONFIG, [*overrides, "selection.rank_by=random"]), branch, backend=StandInBackend(),
                     branch_from=bad)
    # A run dir branched from one point is not re-branched from another.
    with pytest.raises(RunDirError, match="already holds a run, which was branched from .*@iter_001/score"):
        loop.run(load_config(CONFIG, [*overrides, "selection.rank_by=random"]), branch, backend=StandInBackend(),
                 branch_from=f"{source}@iter_001/judge")
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before  # the source is only read


def test_a_damaged_source_is_refused_and_a_branch_killed_while_sharing_completes_on_rerun(reference, overrides,
                                                                                          tmp_path):
    source = tmp_path / "source"
    shutil.copytree(reference[0], source)
    victim = source / "iter_001/judgments.parquet"
    good = victim.read_bytes()
    victim.write_bytes(good[:-30])
    with pytest.raises(RunDirError, match=r"iter_001/judge: artifact .*judgments.parquet does not match"):
        loop.run(load_config(CONFIG, overrides), tmp_path / "b0", backend=StandInBackend(),
                 branch_from=f"{source}@iter_001/score")
    assert not (tmp_path / "b0").exists()
    victim.write_bytes(good)
    branch = tmp_path / "branch"
    assert session(overrides, branch, kill_at="iter_001/judge:shared@1",
                   branch_from=f"{source}@iter_001/score") == -signal.SIGKILL
    assert json.loads((branch / "state.json").read_text())["stages"] == {}  # linked files, nothing recorded yet
    assert session(overrides, branch) == 0  # no --from needed: the branch completes from its own state
    assert results(branch) == results(reference[0])
    assert [k for s in sessions(branch) for k in s.get("stages_shared", {})] == list(SHARED)
