"""The run directory is the checkpoint.

Every artifact is written under a temporary name, fsynced and then
``os.replace``d into place; ``state.json`` records a stage only after its
artifact is committed, and is itself replaced atomically. A stage recorded in
``state.json`` is verified (sha256) before it is trusted on resume.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import signal
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from orchestrator.config import RunConfig, changed_fields, config_from_dict, config_hash, safe_fields, to_plain

STATE_VERSION = 1
# Pipeline order of the stages of one iteration (for listing state.json).
STAGE_ORDER = ("generate", "judge", "score", "select", "train", "eval", "metrics")
# Fault injection for the kill/resume tests: SIGKILL this process right after
# the named stage (e.g. "iter_001/judge") is recorded in state.json.
KILL_AFTER_ENV = "SELFREWARD_KILL_AFTER_STAGE"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message says which file and why."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` via temp file + fsync + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory (relative names and contents, sorted)."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(bytes.fromhex(sha256_path(p)))
        return h.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class StageRecord:
    """One committed stage: its artifact (relative to the run dir) and what it held."""

    artifact: str
    sha256: str
    rows: int | None
    seconds: float
    finished_at: str
    summary: dict[str, Any] = field(default_factory=dict)


class RunDir:
    """A run directory: config.yaml, state.json, iter_XXX/ artifacts."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.state_path = self.root / "state.json"
        self.config_path = self.root / "config.yaml"
        self._state: dict[str, Any] = {}

    # --- layout -----------------------------------------------------------
    def iter_dir(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration:03d}"

    @staticmethod
    def stage_key(iteration: int, stage: str) -> str:
        return f"iter_{iteration:03d}/{stage}"

    @staticmethod
    def stage_sort_key(key: str) -> tuple[str, int]:
        it, _, stage = key.partition("/")
        return it, STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)

    # --- opening ----------------------------------------------------------
    def open(self, cfg: RunConfig, versions: dict[str, str]) -> bool:
        """Create the run dir, or check that ``cfg`` may resume it. Returns True when resuming.

        Raises RunDirError when the frozen config differs in a field that is not safe.
        """
        if self.state_path.exists():
            self._state = self._read_state()
            frozen = self._read_frozen_config()
            unsafe = [c for c in changed_fields(frozen, cfg) if c[0] not in safe_fields()]
            if unsafe:
                lines = "\n".join(f"  {k}: {a!r} (run) -> {b!r} (now)" for k, a, b in unsafe)
                raise RunDirError(
                    f"refusing to resume {self.root}: the config differs from {self.config_path} "
                    f"in fields that change results:\n{lines}\n"
                    f"Use a new --run-dir, or change only safe fields ({', '.join(sorted(safe_fields()))})."
                )
            if to_plain(frozen) != to_plain(cfg):
                atomic_write_bytes(self.config_path, yaml.safe_dump(to_plain(cfg), sort_keys=False).encode())
            return True
        if self.root.exists() and any(self.root.iterdir()):
            raise RunDirError(
                f"{self.root} exists, is not empty and has no state.json: not a run directory; "
                "pick an empty or new --run-dir"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.config_path, yaml.safe_dump(to_plain(cfg), sort_keys=False).encode())
        self._state = {
            "version": STATE_VERSION,
            "created_at": _now(),
            "config_hash": config_hash(cfg),
            "seed": cfg.seed,
            "library_versions": versions,
            "stages": {},
        }
        self._write_state()
        return False

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{self.state_path} is not valid JSON ({e}); the run dir is damaged") from e
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "stages" not in state:
            raise RunDirError(f"{self.state_path}: not a state file of version {STATE_VERSION}")
        return state

    def _read_frozen_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise RunDirError(f"{self.config_path} is missing; the run dir is damaged")
        tree = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        return config_from_dict(tree, str(self.config_path))

    def load_state(self) -> dict[str, Any]:
        """Read state.json (for `selfreward status`)."""
        if not self.state_path.exists():
            raise RunDirError(f"{self.root} has no state.json: not a run directory")
        self._state = self._read_state()
        return self._state

    # --- stages -----------------------------------------------------------
    def record(self, key: str) -> StageRecord | None:
        """The committed record of a stage after verifying its artifact, or None if not committed.

        Raises RunDirError when the artifact is missing or its sha256 differs.
        """
        raw = self._state["stages"].get(key)
        if raw is None:
            return None
        rec = StageRecord(**raw)
        path = self.root / rec.artifact
        if not path.exists():
            raise RunDirError(f"stage {key} is recorded as done but its artifact {path} is missing")
        digest = sha256_path(path)
        if digest != rec.sha256:
            raise RunDirError(
                f"stage {key}: artifact {path} does not match its recorded sha256 "
                f"({digest[:12]} != {rec.sha256[:12]}); it was changed or corrupted after commit"
            )
        return rec

    def commit(self, key: str, artifact: Path, rows: int | None, seconds: float, summary: dict[str, Any]) -> StageRecord:
        """Record an already committed artifact as the output of stage ``key`` (atomic)."""
        rec = StageRecord(
            artifact=str(artifact.relative_to(self.root)),
            sha256=sha256_path(artifact),
            rows=rows,
            seconds=round(seconds, 3),
            finished_at=_now(),
            summary=summary,
        )
        self._state["stages"][key] = asdict(rec)
        self._write_state()
        if os.environ.get(KILL_AFTER_ENV) == key:
            os.kill(os.getpid(), signal.SIGKILL)
        return rec

    def _write_state(self) -> None:
        atomic_write_bytes(self.state_path, (json.dumps(self._state, indent=2, sort_keys=True) + "\n").encode())

    # --- artifacts --------------------------------------------------------
    def write_table(self, path: Path, table: pa.Table) -> Path:
        """Commit a Parquet file atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        pq.write_table(table, tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return path

    def write_json(self, path: Path, obj: Any) -> Path:
        atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
        return path

    def staging_dir(self, final: Path) -> Path:
        """A fresh empty directory beside ``final`` to build a directory artifact in.

        Staging directories left by an attempt that died are removed first.
        """
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        return tmp

    def commit_dir(self, staged: Path, final: Path) -> Path:
        """Move a fully written staging directory to ``final`` (fsync files first)."""
        for p in staged.rglob("*"):
            if p.is_file():
                _fsync_file(p)
        if final.exists():
            # Left by an attempt that died before state.json recorded it.
            shutil.rmtree(final)
        os.replace(staged, final)
        _fsync_dir(final.parent)
        return final

    @staticmethod
    def read_table(path: Path) -> pa.Table:
        return pq.read_table(path)

    @staticmethod
    def read_json(path: Path) -> Any:
        return json.loads(path.read_text(encoding="utf-8"))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
