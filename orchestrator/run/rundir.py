"""The run directory is the checkpoint.

Every artifact is written under a temporary name, fsynced and then moved
into place (``workers.storage``); ``state.json`` records a stage only
after its artifact is committed, and is itself replaced atomically. A stage
recorded in ``state.json`` is verified (sha256) before it is trusted on
resume. A run directory is a local path or a ``pyarrow.fs`` URI.

Long stages commit their engine work in parts (``iter_XXX/parts/<stage>/
<call>/part-<first>-<end>.parquet``, one per shard of items): a part that is
committed is never redone, one that is not is redone exactly once, and the
parts are removed once the stage's artifact is committed. Each session (one
run or resume of the process) is accounted in ``state.json``: which stages
and parts it reused and which it computed.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from orchestrator.config import (
    ConfigError,
    RunConfig,
    changed_fields,
    config_from_dict,
    config_hash,
    dump_yaml,
    parse_yaml,
    safe_fields,
    to_plain,
)
from orchestrator.inputs import shown, unicode_problem, writable_folder
from orchestrator.run.lock import LOCK_FILE, RunLock, RunLockedError
from workers import faults
from workers.storage import Storage

if TYPE_CHECKING:
    from orchestrator.run.branch import Shared

STATE_VERSION = 1
# Pipeline order of the stages of one iteration (for listing state.json).
STAGE_ORDER = ("generate", "judge", "score", "select", "train", "eval", "metrics")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message says which file and why."""


STATE_BACKUP = "state.json.prev"


@dataclass
class StageRecord:
    """One committed stage: its artifact (relative to the run dir) and what it held."""

    artifact: str
    sha256: str
    rows: int | None
    seconds: float
    finished_at: str
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] | None = None  # a directory artifact: sha256 per file, to name the one that changed


def _frozen_text(cfg: RunConfig) -> str:
    """config.yaml's text for ``cfg``."""
    return dump_yaml(to_plain(cfg))


_PART_RE = re.compile(r"^part-(\d{9})-(\d{9})\.parquet$")


class RunDir:
    """A run directory: config.yaml, state.json, iter_XXX/ artifacts; paths inside it are relative strings."""

    def __init__(self, root: str | Path, storage: Storage | None = None) -> None:
        self.storage = storage or Storage(root)
        self.root = str(self.storage)
        self.state_path = "state.json"
        self.config_path = "config.yaml"
        self._state: dict[str, Any] = {}
        self.session: dict[str, Any] = {}
        self._lock = RunLock(self.storage)
        self._verified: dict[str, str] = {}  # stage key -> the sha256 its artifact was verified against

    @property
    def name(self) -> str:
        """The run dir's last path component (how reports and trackers name the run)."""
        return self.root.rstrip("/").rsplit("/", 1)[-1]

    def where(self, rel: str = "") -> str:
        """``rel`` as a location for messages."""
        return self.storage.uri(rel) if self.storage.local or self.storage.scheme else self.storage.path(rel)

    # --- layout -----------------------------------------------------------
    @staticmethod
    def iter_dir(iteration: int) -> str:
        return f"iter_{iteration:03d}"

    @staticmethod
    def stage_key(iteration: int, stage: str) -> str:
        return f"iter_{iteration:03d}/{stage}"

    @staticmethod
    def stage_sort_key(key: str) -> tuple[str, int]:
        it, _, stage = key.partition("/")
        return it, STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)

    # --- opening ----------------------------------------------------------
    def open(self, cfg: RunConfig, versions: dict[str, str], model_fingerprint: str = "",
             shared: Shared | None = None) -> bool:
        """Lock the run dir, then create it or check that ``cfg`` may resume it. Returns True when resuming.

        ``model_fingerprint`` identifies the base model's files (``models.model_fingerprint``).
        ``shared``: the stages a new branch starts from (``orchestrator.run.branch``); they are linked in and
        recorded before anything else happens.
        Raises RunDirError when another process holds the run dir, when the
        frozen config differs in a field that is not safe, or when
        ``model.path`` now holds another model. ``close`` releases the lock.
        """
        try:
            self._lock.acquire()
        except RunLockedError as e:
            raise RunDirError(str(e)) from None
        try:
            return self._open(cfg, versions, model_fingerprint, shared)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run dir's lock."""
        self._lock.release()

    def check(self, cfg: RunConfig, model_fingerprint: str = "", redo: str | None = None,
              shared: Shared | None = None) -> bool:
        """Everything ``open`` (and ``--redo``) would refuse, found without creating or changing anything.

        Returns True when the run dir holds a run ``cfg`` may resume. Raises
        RunDirError naming the run dir and what is wrong: a file or an
        unwritable folder where the run dir goes, a damaged state.json or
        config.yaml, a config that differs in fields that change results, a
        base model that changed, a ``redo`` stage that is not committed or
        whose later artifacts lie outside the run dir, a committed artifact
        that is missing or damaged, a run dir another process holds, a
        ``shared`` branch point other than the one this run dir was branched
        from, a branch whose source lost a stage before it was shared.
        """
        st = self.storage
        if st.local:
            problem = unicode_problem(self.root)
            if problem:
                raise RunDirError(f"--run-dir {shown(self.root)}: {problem}")
            reason = writable_folder(Path(st.root))
            if reason:
                raise RunDirError(f"--run-dir {self.root}: {reason}")
        if st.exists() and not st.is_dir():
            raise RunDirError(f"--run-dir {self.root} is a file, not a directory")
        if not st.exists(self.state_path):
            if st.exists() and not self._unfinished_creation(cfg):
                raise RunDirError(
                    f"{self.root} exists, is not empty and has no state.json: not a run directory; "
                    "pick an empty or new --run-dir"
                )
            if redo:
                raise RunDirError(f"--redo {redo}: {self.root} has no committed stage (it is not a run directory yet)")
            return False
        self._state = self._read_state()
        self._check_branch(shared)
        frozen = self._read_frozen_config()
        unsafe = [c for c in changed_fields(frozen, cfg) if c[0] not in safe_fields()]
        if unsafe:
            lines = "\n".join(f"  {k}: {a!r} (run) -> {b!r} (now)" for k, a, b in unsafe)
            raise RunDirError(
                f"refusing to resume {self.root}: the config differs from {self.where(self.config_path)} "
                f"in fields that change results:\n{lines}\n"
                f"Use a new --run-dir, or change only safe fields ({', '.join(sorted(safe_fields()))})."
            )
        known = self._state.get("model_fingerprint")
        if model_fingerprint and known and known != model_fingerprint:
            raise RunDirError(
                f"refusing to resume {self.root}: model.path {cfg.model.path!r} now holds a different model than the "
                f"one this run started with (fingerprint {model_fingerprint[:12]} != {known[:12]}); the run's "
                "adapters were trained for the other one. Point model.path back at it, or use a new --run-dir."
            )
        forgotten = self.redo_keys(redo) if redo else []
        for k in forgotten:
            self.check_artifact(k)
        for k in self._state["stages"]:
            if k not in forgotten:
                self.record(k)  # each committed artifact still what was committed
        try:
            self._lock.check()
        except RunLockedError as e:
            raise RunDirError(str(e)) from None
        return True

    def _open(self, cfg: RunConfig, versions: dict[str, str], model_fingerprint: str, shared: Shared | None) -> bool:
        st = self.storage
        if self.check(cfg, model_fingerprint, shared=shared):
            frozen = self._read_frozen_config()
            if to_plain(frozen) != to_plain(cfg):
                st.write_text(self.config_path, _frozen_text(cfg))
            self._start_session(resumed=True)
            self._share()
            return True
        st.mkdir()
        for name in self._creation_leftovers():
            st.delete(name)
        # state.json is written last: a run dir without it holds nothing but what this creation writes, and the same
        # command creates it again (``_unfinished_creation``).
        st.write_text(self.config_path, _frozen_text(cfg))
        self._state = {
            "version": STATE_VERSION,
            "created_at": _now(),
            "config_hash": config_hash(cfg),
            "seed": cfg.seed,
            "library_versions": versions,
            "model_fingerprint": model_fingerprint,
            "stages": {},
            "sessions": [],
            **({"branched_from": {**shared.to_state(), "complete": False}} if shared else {}),
        }
        self._start_session(resumed=False)
        self._share()
        return False

    # --- branches -------------------------------------------------------------
    @property
    def branched_from(self) -> dict[str, Any] | None:
        """state.json's record of the run dir and stage this run was branched from (None: not a branch)."""
        return self._state.get("branched_from")

    def _check_branch(self, shared: Shared | None) -> None:
        """RunDirError when ``--from`` names another branch point than this run dir's, or a stage still to share
        is gone from the source."""
        branch = self._state.get("branched_from")
        if shared is not None and (branch is None or (branch.get("run_dir"), branch.get("stage")) !=
                                   (shared.source, shared.stage)):
            was = f"was branched from {branch.get('run_dir')}@{branch.get('stage')}" if branch else "is not a branch"
            raise RunDirError(f"--from {shared.source}@{shared.stage}: {self.root} already holds a run, which {was}; "
                              "resume it without --from, or branch into a new --run-dir")
        if branch is None or branch.get("complete"):
            return
        source = Storage(branch["run_dir"])
        for key, rec in branch["stages"].items():
            if key not in self._state["stages"]:
                why = source.inside(rec["artifact"])
                if why is None and not source.exists(rec["artifact"]):
                    why = "is missing"
                if why is None and source.sha256(rec["artifact"]) != rec["sha256"]:
                    why = "was changed since it was committed (sha256)"
                if why is not None:
                    raise RunDirError(f"{self.root} is a branch whose stage {key} is still to be shared from "
                                      f"{branch['run_dir']}, but its artifact {rec['artifact']!r} there {why}; "
                                      "branch afresh into a new --run-dir")

    def _share(self) -> None:
        """Link (or copy) in the stages this branch shares that it does not hold yet, each verified, then record them.

        Runs at every opening until all are in, so a branch interrupted while
        sharing completes on the next run; after that the source is never read
        again (a shared stage that is redone is computed here like any other).
        """
        branch = self._state.get("branched_from")
        if branch is None or branch.get("complete"):
            return
        source = Storage(branch["run_dir"])
        for key in sorted(branch["stages"], key=self.stage_sort_key):
            rec = branch["stages"][key]
            if key in self._state["stages"]:
                continue
            how = self.storage.share_from(source, rec["artifact"])
            _, digest = self._digests(rec["artifact"])
            if digest != rec["sha256"]:
                raise RunDirError(f"sharing stage {key} from {branch['run_dir']}: {rec['artifact']!r} has sha256 "
                                  f"{digest[:12]}, recorded {rec['sha256'][:12]}: it changed there while being shared")
            self._state["stages"][key] = dict(rec)
            self._verified[key] = digest
            self.session.setdefault("stages_shared", {})[key] = how
            faults.point(f"{key}:shared")
        branch["complete"] = True
        self._write_state()

    def _creation_leftovers(self) -> list[str]:
        """Temporary files a creation that failed mid-write left (none when it failed cleanly)."""
        return [n for n in self.storage.listdir() if n.startswith((f".{self.config_path}.tmp-", f".{self.state_path}.tmp-"))]

    def _unfinished_creation(self, cfg: RunConfig) -> bool:
        """Whether the run dir (without state.json) holds only what creating it for ``cfg`` writes before state.json:
        the lock, this config's config.yaml, temporary files. Anything else is someone's folder, never written over."""
        names = set(self.storage.listdir()) - {LOCK_FILE} - set(self._creation_leftovers())
        if not names:
            return True
        try:
            return names == {self.config_path} and self.storage.read_text(self.config_path) == _frozen_text(cfg)
        except UnicodeDecodeError:
            return False

    def _start_session(self, resumed: bool) -> None:
        # parts_*: {stage key: parts}; train_resumed_from_step: {stage key: step}.
        self.session = {"started_at": _now(), "resumed": resumed, "stages_reused": [], "stages_computed": [],
                        "parts_reused": {}, "parts_computed": {}, "train_resumed_from_step": {}}
        self._state.setdefault("sessions", []).append(self.session)
        self._write_state()

    def _read_state(self) -> dict[str, Any]:
        hint = (f" The state before the last commit is kept in {self.where(STATE_BACKUP)}: copy it over "
                f"{self.where(self.state_path)} to resume from the stages it lists (the last one is then redone)."
                if self.storage.exists(STATE_BACKUP) else "")
        try:
            state = json.loads(self.storage.read_text(self.state_path))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{self.where(self.state_path)} is damaged: not valid JSON ({e}).{hint}") from e
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("stages"), dict):
            raise RunDirError(f"{self.where(self.state_path)} is damaged: not a state file of version {STATE_VERSION}.{hint}")
        problem = _shape_problem(state)
        if problem:
            raise RunDirError(f"{self.where(self.state_path)} is damaged: {problem}.{hint}")
        return state

    def _read_frozen_config(self) -> RunConfig:
        if not self.storage.is_file(self.config_path):
            raise RunDirError(f"{self.where(self.config_path)} is missing; the run dir is damaged")
        where = self.where(self.config_path)
        try:
            tree = parse_yaml(self.storage.read_text(self.config_path), where) or {}
        except (ConfigError, UnicodeDecodeError) as e:
            raise RunDirError(f"{where} is damaged: {e}") from None
        if not isinstance(tree, dict):
            raise RunDirError(f"{where} is damaged: not a mapping of config fields")
        return config_from_dict(tree, where)

    def frozen_config(self) -> RunConfig:
        """The run's config as frozen at its start (RunDirError when missing or damaged)."""
        return self._read_frozen_config()

    def load_state(self) -> dict[str, Any]:
        """Read state.json (for `selfreward status` and reports)."""
        if not self.storage.exists(self.state_path):
            raise RunDirError(f"{self.root} has no state.json: not a run directory")
        self._state = self._read_state()
        return self._state

    # --- stages -----------------------------------------------------------
    def committed(self, key: str) -> dict[str, Any] | None:
        """Stage ``key``'s record as state.json holds it (not verified: see ``record``), or None."""
        return self._state.get("stages", {}).get(key)

    def record(self, key: str) -> StageRecord | None:
        """The committed record of a stage after verifying its artifact, or None if not committed.

        Raises RunDirError when the artifact is missing or its sha256 differs.
        """
        raw = self._state["stages"].get(key)
        if raw is None:
            return None
        rec = StageRecord(**raw)
        if self._verified.get(key) == rec.sha256:  # checked once per run dir opening (``check`` checks them all)
            return rec
        self.check_artifact(key)
        redo = f"; rerun with --redo {key} to recompute it and every stage after it"
        if not self.storage.exists(rec.artifact):
            raise RunDirError(f"stage {key} is recorded as done but its artifact {self.where(rec.artifact)} is missing{redo}")
        files, digest = self._digests(rec.artifact)
        if digest != rec.sha256:
            what = self.where(rec.artifact)
            if rec.files is not None and files is not None:
                changed = sorted(n for n in rec.files.keys() | files.keys() if rec.files.get(n) != files.get(n))
                what += f" (changed: {', '.join(changed)})"
            raise RunDirError(
                f"stage {key}: artifact {what} does not match its recorded sha256 "
                f"({digest[:12]} != {rec.sha256[:12]}): it was changed or corrupted after commit{redo}"
            )
        self._verified[key] = rec.sha256
        return rec

    def check_artifact(self, key: str) -> None:
        """RunDirError, naming the entry, when stage ``key``'s recorded artifact is not a path inside the run dir."""
        artifact = self._state["stages"][key]["artifact"]
        why = self.storage.inside(artifact)
        if why is not None:
            raise RunDirError(f"{self.where(self.state_path)}: stage {key} records its artifact as {artifact!r}, which "
                              f"{why}: refusing to read or delete it. Restore state.json from a copy you trust.")

    def _digests(self, artifact: str) -> tuple[dict[str, str] | None, str]:
        """(sha256 per file of a directory artifact, else None; the artifact's sha256), each file read once."""
        if not self.storage.is_dir(artifact):
            return None, self.storage.sha256(artifact)
        files = self.storage.digests(artifact)
        return files, Storage.tree_sha256(files)

    def redo_keys(self, key: str) -> list[str]:
        """The stages ``--redo key`` forgets, in pipeline order; RunDirError when ``key`` is not committed."""
        if key not in self._state["stages"]:
            committed = ", ".join(sorted(self._state["stages"], key=self.stage_sort_key)) or "none"
            raise RunDirError(f"--redo {key}: not a committed stage of {self.root} (committed: {committed})")
        it, stage = self.stage_sort_key(key)
        return sorted((k for k in self._state["stages"] if self.stage_sort_key(k) >= (it, stage)), key=self.stage_sort_key)

    def redo(self, key: str) -> list[str]:
        """Forget stage ``key`` and every stage after it (later stages of its iteration, every later iteration).

        Their artifacts, parts and training checkpoints are deleted, so the run
        computes them again. Returns the keys forgotten, in pipeline order.
        Raises RunDirError when ``key`` is not a committed stage or a stage to
        forget records an artifact outside the run dir (nothing is deleted then).
        """
        later = self.redo_keys(key)
        for k in later:
            self.check_artifact(k)  # every one before anything is deleted
        for k in later:
            rec = self._state["stages"].pop(k)
            self.storage.delete(rec["artifact"])
            self.clear_parts(k)
            if k.endswith("/train"):
                self.storage.delete(f"{k.split('/')[0]}/train")
        self.session.setdefault("redone", []).extend(later)
        self._write_state()
        return later

    def reused(self, key: str) -> None:
        """Account a committed stage this session skipped."""
        self.session["stages_reused"].append(key)
        self._write_state()

    def commit(self, key: str, artifact: str, rows: int | None, seconds: float, summary: dict[str, Any]) -> StageRecord:
        """Record an already committed artifact as the output of stage ``key`` (atomic)."""
        files, digest = self._digests(artifact)
        rec = StageRecord(
            artifact=artifact,
            sha256=digest,
            files=files,
            rows=rows,
            seconds=round(seconds, 3),
            finished_at=_now(),
            summary=summary,
        )
        self._state["stages"][key] = asdict(rec)
        self.session["stages_computed"].append(key)
        self._write_state()
        faults.point(key)
        return rec

    def _write_state(self) -> None:
        if self.storage.exists(self.state_path):
            self.storage.write_bytes(STATE_BACKUP, self.storage.read_bytes(self.state_path))
        self.storage.write_text(self.state_path, json.dumps(self._state, indent=2, sort_keys=True) + "\n")
        self._lock.refresh()

    # --- parts of a stage ---------------------------------------------------
    @staticmethod
    def parts_dir(key: str, call: str) -> str:
        """Where the parts of one engine call of stage ``key`` go (``call``: a short name, unique in the stage)."""
        it, _, stage = key.partition("/")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", call).strip("_")
        return f"{it}/parts/{stage}/{slug}"

    def committed_parts(self, parts_dir: str) -> dict[tuple[int, int], str]:
        """{(first, end): file} of the parts committed in ``parts_dir`` (item ranges [first, end))."""
        out = {}
        for name in self.storage.listdir(parts_dir):
            m = _PART_RE.match(name)
            if m:
                out[(int(m.group(1)), int(m.group(2)))] = f"{parts_dir}/{name}"
        return out

    def write_part(self, key: str, parts_dir: str, first: int, end: int, table: pa.Table) -> None:
        """Commit the results of items [first, end) of one call of stage ``key``."""
        self.storage.write_table(f"{parts_dir}/part-{first:09d}-{end:09d}.parquet", table)
        self.session["parts_computed"][key] = self.session["parts_computed"].get(key, 0) + 1
        self._write_state()
        faults.point(f"{key}:part")

    def reused_parts(self, key: str, n: int) -> None:
        """Account ``n`` committed parts of stage ``key`` this session read instead of computing."""
        if n:
            self.session["parts_reused"][key] = self.session["parts_reused"].get(key, 0) + n
            self._write_state()

    def clear_parts(self, key: str) -> None:
        """Remove the parts of stage ``key`` once its artifact is committed."""
        it, _, stage = key.partition("/")
        self.storage.delete(f"{it}/parts/{stage}")
        if not self.storage.listdir(f"{it}/parts"):
            self.storage.delete(f"{it}/parts")

    # --- artifacts --------------------------------------------------------
    def write_table(self, rel: str, table: pa.Table) -> str:
        """Commit a Parquet file atomically."""
        self.storage.write_table(rel, table)
        return rel

    def write_json(self, rel: str, obj: Any) -> str:
        self.storage.write_text(rel, json.dumps(obj, indent=2, sort_keys=True) + "\n")
        return rel

    def staging_dir(self, final: str) -> str:
        """A fresh empty directory beside ``final`` to build a directory artifact in (stale ones removed)."""
        return self.storage.staging_dir(final)

    def commit_dir(self, staged: str, final: str) -> str:
        """Move a fully written staging directory to ``final``."""
        self.storage.commit_dir(staged, final)
        return final

    def read_table(self, rel: str) -> pa.Table:
        return self.storage.read_table(rel)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.storage.read_text(rel))

    def exists(self, rel: str) -> bool:
        return self.storage.exists(rel)


_KEY_RE = re.compile(r"^iter_\d{3}/[a-z_]+$")
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "artifact": (str,), "sha256": (str,), "rows": (int, type(None)), "seconds": (int, float),
    "finished_at": (str,), "summary": (dict,), "files": (dict, type(None)),
}


def _shape_problem(state: dict[str, Any]) -> str | None:
    """What makes ``state`` not a state file this code wrote (None when its stages are well formed)."""
    for key, rec in state["stages"].items():
        if not _KEY_RE.match(key):
            return f"stage key {key!r} is not of the form iter_NNN/<stage>"
        if not isinstance(rec, dict):
            return f"stage {key} is a {type(rec).__name__}, not a record"
        if set(_RECORD_TYPES) - {"files"} - set(rec) or set(rec) - set(_RECORD_TYPES):
            return f"stage {key} has the fields {sorted(rec)}, expected {sorted(_RECORD_TYPES)}"
        for name, types in _RECORD_TYPES.items():
            value = rec.get(name)
            if not isinstance(value, types) or isinstance(value, bool):
                return f"stage {key}: field {name!r} is {value!r}, expected {' or '.join(t.__name__ for t in types)}"
    branch = state.get("branched_from")
    if branch is not None:
        if not (isinstance(branch, dict) and isinstance(branch.get("run_dir"), str) and isinstance(branch.get("stage"), str)
                and isinstance(branch.get("stages"), dict)):
            return "field 'branched_from' is not a branch record (run_dir, stage, stages)"
        problem = _shape_problem({"stages": branch["stages"], "created_at": "", "config_hash": "", "sessions": []})
        if problem:
            return f"branched_from: {problem}"
    for name, kind in (("created_at", str), ("config_hash", str), ("sessions", list)):
        if not isinstance(state.get(name), kind):
            return f"field {name!r} is {state.get(name)!r}, expected {kind.__name__}"
    return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
