import json

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from orchestrator.config import load_config
from orchestrator.context import uncovered_ranges
from orchestrator.run.rundir import RunDir, RunDirError
from workers.storage import Storage, StorageError


def _open(root, *overrides, storage=None, fingerprint=""):
    rd = RunDir(root, storage)
    resumed = rd.open(load_config(None, list(overrides)), {"x": "1"}, fingerprint)
    return rd, resumed


@pytest.fixture(params=["path", "file-uri", "in-memory"])
def location(request, tmp_path):
    """A run dir as a local path, as a file:// URI, and on a non-local (in-memory) pyarrow file system."""
    if request.param == "path":
        return str(tmp_path / "run"), None
    if request.param == "file-uri":
        return f"file://{tmp_path}/run", None
    return "bucket/run", Storage("bucket/run", pafs._MockFileSystem())


def test_commit_record_and_resume(location):
    root, storage = location
    rd, resumed = _open(root, storage=storage)
    assert not resumed
    rd.write_table("iter_001/t.parquet", pa.table({"a": [1, 2, 3]}))
    rd.commit("iter_001/generate", "iter_001/t.parquet", 3, 1.5, {"tokens": 9})
    assert not [n for n in rd.storage.listdir("iter_001") if ".tmp-" in n]  # no temp files left behind
    rd.close()

    rd2, resumed = _open(root, "iterations=5", storage=storage)  # safe change
    assert resumed
    rec = rd2.record("iter_001/generate")
    assert rec.rows == 3 and rec.summary == {"tokens": 9}
    assert rd2.record("iter_001/judge") is None
    assert rd2.read_table("iter_001/t.parquet")["a"].to_pylist() == [1, 2, 3]
    state = json.loads(rd2.storage.read_text("state.json"))
    assert state["library_versions"] == {"x": "1"} and "config_hash" in state
    # Each session is accounted: the first computed one stage, the second none yet.
    assert [s["stages_computed"] for s in state["sessions"]] == [["iter_001/generate"], []]
    assert [s["resumed"] for s in state["sessions"]] == [False, True]


def test_parts_commit_and_clear(location):
    root, storage = location
    rd, _ = _open(root, storage=storage)
    d = rd.parts_dir("iter_001/judge", "judge (current)")
    assert d == "iter_001/parts/judge/judge_current"
    rd.write_part("iter_001/judge", d, 0, 4, pa.table({"v": [1, 2, 3, 4]}))
    rd.write_part("iter_001/judge", d, 8, 10, pa.table({"v": [9, 10]}))
    parts = rd.committed_parts(d)
    assert sorted(parts) == [(0, 4), (8, 10)]
    assert rd.read_table(parts[(8, 10)])["v"].to_pylist() == [9, 10]
    rd.clear_parts("iter_001/judge")
    assert rd.committed_parts(d) == {} and not rd.storage.exists("iter_001/parts")


def test_uncovered_ranges_reform_lost_shards():
    assert uncovered_ranges(10, [], 4) == [(0, 4), (4, 8), (8, 10)]
    # Shards 0 and 2 committed: only shard 1 is redone, as the same shard.
    assert uncovered_ranges(10, [(0, 4), (8, 10)], 4) == [(4, 8)]
    assert uncovered_ranges(10, [(0, 10)], 4) == []
    # A different shard size on resume still covers every missing item exactly once.
    assert uncovered_ranges(10, [(4, 8)], 3) == [(0, 3), (3, 4), (8, 10)]


def test_changed_config_is_refused_with_the_field(tmp_path):
    _open(tmp_path / "run")[0].close()
    with pytest.raises(RunDirError, match=r"dpo.beta: 0.1 \(run\) -> 0.2"):
        _open(tmp_path / "run", "dpo.beta=0.2")


def test_corrupted_artifact_is_detected(tmp_path):
    rd, _ = _open(tmp_path / "run")
    rd.write_table("iter_001/t.parquet", pa.table({"a": [1]}))
    rd.commit("iter_001/generate", "iter_001/t.parquet", 1, 0.1, {})
    rd.close()
    path = tmp_path / "run" / "iter_001" / "t.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RunDirError, match=r"t.parquet.*sha256.*rerun with --redo iter_001/generate"):
        _open(tmp_path / "run")  # found before anything is written


def test_a_changed_file_of_a_directory_artifact_is_named(tmp_path):
    rd, _ = _open(tmp_path / "run")
    staged = rd.staging_dir("iter_001/adapter")
    rd.storage.write_bytes(f"{staged}/adapter_config.json", b"{}")
    rd.storage.write_bytes(f"{staged}/adapter_model.safetensors", b"weights")
    rd.commit_dir(staged, "iter_001/adapter")
    rd.commit("iter_001/train", "iter_001/adapter", None, 0.1, {})
    rd.close()
    (tmp_path / "run" / "iter_001" / "adapter" / "adapter_model.safetensors").write_bytes(b"weigh")
    with pytest.raises(RunDirError, match=r"adapter \(changed: adapter_model.safetensors\).*--redo iter_001/train"):
        _open(tmp_path / "run")


def test_directory_commit_replaces_leftovers(location):
    root, storage = location
    rd, _ = _open(root, storage=storage)
    rd.storage.write_text("iter_001/adapter/stale", "from a dead attempt")
    staged = rd.staging_dir("iter_001/adapter")
    rd.storage.write_bytes(f"{staged}/w.bin", b"123")
    rd.commit_dir(staged, "iter_001/adapter")
    assert rd.storage.listdir("iter_001/adapter") == ["w.bin"]
    assert rd.storage.listdir("iter_001") == ["adapter"]
    digest = rd.storage.sha256("iter_001/adapter")
    assert digest == rd.storage.sha256("iter_001/adapter") and len(digest) == 64


def test_non_run_dir_is_refused(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(RunDirError, match="not a run directory"):
        _open(tmp_path)


def test_bad_uri_is_a_clear_error():
    with pytest.raises(StorageError, match="nosuchscheme://x"):
        Storage("nosuchscheme://x")


def test_a_second_run_on_the_same_dir_is_refused_until_the_first_ends(location):
    root, storage = location
    first, _ = _open(root, storage=storage)
    with pytest.raises(RunDirError, match="in use by another run"):
        _open(root, storage=storage)
    first.close()
    second, resumed = _open(root, storage=storage)  # released: the run dir resumes
    assert resumed
    second.close()


def test_a_stale_lease_on_a_store_without_locks_is_taken_over():
    import time

    from orchestrator.run.lock import LOCK_FILE, RunLock

    st = Storage("bucket/run", pafs._MockFileSystem())
    st.write_text(LOCK_FILE, json.dumps({"host": "gone", "pid": 1, "heartbeat": time.time() - 3600}))
    lock = RunLock(st)
    lock.acquire()  # an hour-old heartbeat: the holder is dead
    assert json.loads(st.read_text(LOCK_FILE))["pid"] != 1
    lock.release()
    assert not st.exists(LOCK_FILE)


def test_redo_forgets_the_stage_and_everything_after_it(tmp_path):
    rd, _ = _open(tmp_path / "run")
    for t in (1, 2):
        for stage in ("generate", "judge", "score"):
            rel = f"iter_{t:03d}/{stage}.parquet"
            rd.write_table(rel, pa.table({"a": [t]}))
            rd.commit(f"iter_{t:03d}/{stage}", rel, 1, 0.1, {})
    rd.write_part("iter_002/generate", rd.parts_dir("iter_002/generate", "x"), 0, 1, pa.table({"v": [1]}))
    assert rd.redo("iter_001/score") == ["iter_001/score", "iter_002/generate", "iter_002/judge", "iter_002/score"]
    assert sorted(rd.storage.listdir("iter_001")) == ["generate.parquet", "judge.parquet"]
    assert rd.storage.listdir("iter_002") == []
    with pytest.raises(RunDirError, match=r"--redo iter_003/judge: not a committed stage .*iter_001/judge"):
        rd.redo("iter_003/judge")
    rd.close()
    rd2, _ = _open(tmp_path / "run")
    assert rd2.record("iter_001/judge") is not None and rd2.record("iter_001/score") is None


def test_an_adapter_trained_again_is_another_adapter(tmp_path):
    """M(t) is named by its committed sha256: after --redo of its train stage, engines see a new adapter, not a
    cached one under the same name and path (workers/training/canaries.py checks what they then serve)."""
    from orchestrator.run.roles import adapter_of

    rd, _ = _open(tmp_path / "run")
    assert adapter_of(rd, 1).digest == "" and adapter_of(rd, 0) is None

    def train(weights: bytes) -> str:
        staged = rd.staging_dir("iter_001/adapter")
        rd.storage.write_bytes(f"{staged}/adapter_model.safetensors", weights)
        rd.commit_dir(staged, "iter_001/adapter")
        return rd.commit("iter_001/train", "iter_001/adapter", None, 1.0, {}).sha256

    first = train(b"one")
    assert adapter_of(rd, 1).digest == first
    rd.redo("iter_001/train")
    second = train(b"two")
    again = adapter_of(rd, 1)
    assert again.digest == second != first and again.name == "iter_001" and again.path.endswith("iter_001/adapter")
    rd.close()


def test_damaged_state_names_the_file_and_the_backup(tmp_path):
    rd, _ = _open(tmp_path / "run")
    rd.write_table("iter_001/g.parquet", pa.table({"a": [1]}))
    rd.commit("iter_001/generate", "iter_001/g.parquet", 1, 0.1, {})
    rd.close()
    state = tmp_path / "run" / "state.json"
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(RunDirError, match=r"state.json is damaged: not valid JSON.*state.json.prev: copy it over"):
        _open(tmp_path / "run")
    (tmp_path / "run" / "state.json.prev").replace(state)
    rd2, resumed = _open(tmp_path / "run")  # the previous state resumes; the last commit is redone
    assert resumed and rd2.record("iter_001/generate") is None
    rd2.close()


def test_another_model_under_the_same_path_is_refused(tmp_path):
    _open(tmp_path / "run", fingerprint="a" * 64)[0].close()
    with pytest.raises(RunDirError, match=r"now holds a different model .*aaaaaaaaaaaa"):
        _open(tmp_path / "run", fingerprint="b" * 64)


def test_a_failed_write_leaves_the_committed_state_intact(tmp_path, monkeypatch):
    from workers.faults import FAIL_WRITE_ENV

    rd, _ = _open(tmp_path / "run")
    rd.write_table("iter_001/g.parquet", pa.table({"a": [1]}))
    rd.commit("iter_001/generate", "iter_001/g.parquet", 1, 0.1, {})
    before = (tmp_path / "run" / "state.json").read_bytes()
    monkeypatch.setenv(FAIL_WRITE_ENV, "iter_001/g.parquet")
    with pytest.raises(OSError, match="No space left on device") as e:
        rd.write_table("iter_001/g.parquet", pa.table({"a": [2, 3]}))  # overwriting a committed file, disk full
    assert "iter_001/g.parquet" in str(e.value)
    monkeypatch.delenv(FAIL_WRITE_ENV)
    # The committed file and state are as they were, and no partial temporary is left.
    assert rd.read_table("iter_001/g.parquet")["a"].to_pylist() == [1]
    assert (tmp_path / "run" / "state.json").read_bytes() == before
    assert rd.storage.listdir("iter_001") == ["g.parquet"]
    assert rd.record("iter_001/generate") is not None
    rd.close()


def test_a_branch_links_on_one_disk_and_copies_between_file_systems(tmp_path):
    """``Storage.share_from``: the same bytes, linked where both sides are one local disk, copied to another store;
    a file and a directory artifact alike, replacing what a dead attempt left."""
    src = Storage(tmp_path / "src")
    src.write_text("iter_001/generations.parquet", "rows")
    src.write_text("iter_001/adapter/weights.bin", "w")
    src.write_text("iter_001/adapter/sub/config.json", "{}")
    for dst, how in ((Storage(tmp_path / "dst"), "linked"), (Storage("bucket/dst", pafs._MockFileSystem()), "copied")):
        dst.write_text("iter_001/adapter/stale.bin", "left by a dead attempt")
        for rel in ("iter_001/generations.parquet", "iter_001/adapter"):
            assert dst.share_from(src, rel) == how
            assert dst.sha256(rel) == src.sha256(rel)
        assert dst.files("iter_001/adapter") == ["sub/config.json", "weights.bin"]
        assert [n for n in dst.listdir("iter_001") if n.startswith(".")] == []  # no staging left behind
    linked = tmp_path / "dst/iter_001/adapter/weights.bin"
    assert linked.stat().st_ino == (tmp_path / "src/iter_001/adapter/weights.bin").stat().st_ino


def test_every_field_that_changes_results_is_assigned_the_stages_that_read_it():
    """A branch refuses a change to a field a shared stage reads (``orchestrator.run.branch``): every field that
    changes results is named there, so a new one is placed deliberately rather than read by every stage by default."""
    from orchestrator.config import RunConfig, _flatten, safe_fields, to_plain
    from orchestrator.run.branch import EVERY_STAGE, STAGE_READS, readers

    entries = [e for es in STAGE_READS.values() for e in es] + list(EVERY_STAGE)
    unsafe = set(_flatten(to_plain(RunConfig()))) - safe_fields()
    unplaced = sorted(f for f in unsafe if not any(f == e or f.startswith(e + ".") for e in entries))
    assert unplaced == []
    assert readers("generation.temperature") == ("generate",)
    assert readers("selection.mc_dropout.p") == ("score", "select")
    assert set(readers("seed")) == set(STAGE_READS)
