"""Bad inputs through the real CLI entry point (``orchestrator.cli.main``, in process: refusals start no Ray): a
scratch folder with a valid config and prompt file that each case changes into one bad input, and the check every
case makes (exit 2, the culprit named, no traceback, every file under the folder unchanged)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from orchestrator import cli
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.run.rundir import RunDir

PROMPTS = [{"prompt": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(6)]


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root``: sha256 of a file, 'dir', or where a link points."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"link:{os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        elif stat.S_ISREG(p.lstat().st_mode):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "special"
    return out


class Case:
    """A scratch folder with a valid config and prompt file, changed by each case into one bad input."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prompts = root / "prompts.jsonl"
        self.prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
        self.tree = {"iterations": 1, "data": {"prompts": str(self.prompts), "prompts_per_iteration": 2},
                     "eval": {"verifiable": None, "instructions": None, "injections": None}}
        self.config = root / "config.yaml"
        self.write_config()
        self.run_dir = root / "run"

    def write_config(self, text: str | None = None) -> None:
        self.config.write_text(text if text is not None else yaml.safe_dump(self.tree))

    def cfg(self):
        return load_config(self.config)

    def existing_run(self) -> RunDir:
        """A run dir as a run of this config leaves it after its first stage (no engine: the stage is written here)."""
        rd = RunDir(self.run_dir)
        rd.open(self.cfg(), {"x": "1"})
        rd.write_table("iter_001/generations.parquet", pa.table({"a": [1]}))
        rd.commit("iter_001/generate", "iter_001/generations.parquet", 1, 1.0, {})
        rd.write_table("iter_001/judgments.parquet", pa.table({"a": [2]}))
        rd.commit("iter_001/judge", "iter_001/judgments.parquet", 1, 1.0, {})
        rd.close()
        return rd

    def edit_state(self, edit) -> None:
        path = self.run_dir / "state.json"
        state = json.loads(path.read_text())
        edit(state)
        path.write_text(json.dumps(state))


def refused(capsys, case: Case, argv: list[str], *named: str, watch: Path | None = None) -> str:
    """Run the CLI; assert exit 2, each of ``named`` in the message, no traceback, and nothing changed on disk."""
    watch = watch or case.root.parent
    before = tree(watch)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"selfreward {argv} hung")))
    signal.alarm(60)
    try:
        rc = main(argv)
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("selfreward: error: ") and "Traceback" not in err, err
    for text in named:
        assert text in err, (text, err)
    assert tree(watch) == before, "files were created or changed"
    return err


@pytest.fixture
def case(tmp_path, monkeypatch):
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def no_ray(*_):
        raise AssertionError("Ray was started: the input was not refused before any work")

    monkeypatch.setattr(cli, "_init_ray", no_ray)
    return Case(root)


def run(case: Case, *extra: str, run_dir: str | None = None) -> list[str]:
    return ["run", str(case.config), "--run-dir", str(case.run_dir) if run_dir is None else run_dir, *extra]


def model_copy(case: Case, tiny_model_path: Path) -> Path:
    """The bundled model's folder with every file linked, so a case can replace one."""
    folder = case.root / "model"
    folder.mkdir()
    for f in Path(tiny_model_path).iterdir():
        (folder / f.name).symlink_to(f)
    return folder


def replace_file(folder: Path, name: str, text: str | bytes) -> None:
    (folder / name).unlink()
    (folder / name).write_bytes(text.encode() if isinstance(text, str) else text)
