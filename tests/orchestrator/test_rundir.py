import json

import pyarrow as pa
import pytest

from orchestrator.config import load_config
from orchestrator.rundir import RunDir, RunDirError


def _open(root, *overrides):
    rd = RunDir(root)
    resumed = rd.open(load_config(None, list(overrides)), {"x": "1"})
    return rd, resumed


def test_commit_record_and_resume(tmp_path):
    rd, resumed = _open(tmp_path / "run")
    assert not resumed
    path = rd.iter_dir(1) / "t.parquet"
    rd.write_table(path, pa.table({"a": [1, 2, 3]}))
    rd.commit("iter_001/generate", path, 3, 1.5, {"tokens": 9})
    assert not list(rd.iter_dir(1).glob(".*tmp*"))  # no temp files left behind

    rd2, resumed = _open(tmp_path / "run", "iterations=5")  # safe change
    assert resumed
    rec = rd2.record("iter_001/generate")
    assert rec.rows == 3 and rec.summary == {"tokens": 9}
    assert rd2.record("iter_001/judge") is None
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["library_versions"] == {"x": "1"} and "config_hash" in state


def test_changed_config_is_refused_with_the_field(tmp_path):
    _open(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"dpo.beta: 0.1 \(run\) -> 0.2"):
        _open(tmp_path / "run", "dpo.beta=0.2")


def test_corrupted_artifact_is_detected(tmp_path):
    rd, _ = _open(tmp_path / "run")
    path = rd.iter_dir(1) / "t.parquet"
    rd.write_table(path, pa.table({"a": [1]}))
    rd.commit("iter_001/generate", path, 1, 0.1, {})
    path.write_bytes(path.read_bytes()[:-10])
    rd2, _ = _open(tmp_path / "run")
    with pytest.raises(RunDirError, match="t.parquet.*sha256"):
        rd2.record("iter_001/generate")


def test_directory_commit_replaces_leftovers(tmp_path):
    rd, _ = _open(tmp_path / "run")
    final = rd.iter_dir(1) / "adapter"
    final.mkdir(parents=True)
    (final / "stale").write_text("from a dead attempt")
    staged = rd.staging_dir(final)
    (staged / "w.bin").write_bytes(b"123")
    rd.commit_dir(staged, final)
    assert sorted(p.name for p in final.iterdir()) == ["w.bin"]


def test_non_run_dir_is_refused(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(RunDirError, match="not a run directory"):
        _open(tmp_path)
