"""What leaves a run for other tools: ``selfreward export-pairs`` (the preference pairs as a ``datasets``
DatasetDict in TRL's conversational format, with every trust column).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.run.rundir import RunDir

# The columns TRL's preference trainers read, as conversations: the user's prompt, the two assistant replies.
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


class ExportError(ValueError):
    """An export that cannot be made as asked; the message names the argument or the file."""


def _messages(role: str, texts: pa.Array) -> pa.Array:
    return pa.array([[{"role": role, "content": t}] for t in texts.to_pylist()], type=pa.list_(MESSAGE))


def pairs_dataset_table(pairs: pa.Table, kept_only: bool) -> pa.Table:
    """One iteration's pairs.parquet as TRL's conversational preference columns (``prompt``, ``chosen``,
    ``rejected`` as message lists), followed by every other column of the pairs as they are (``prompt_text`` the
    prompt's text). Rows without a pair (a prompt with fewer than two scored responses) are left out; with
    ``kept_only``, so are the pairs the selection dropped."""
    real = pc.and_(pc.is_valid(pairs["chosen"]), pc.is_valid(pairs["rejected"]))
    if kept_only:
        real = pc.and_(real, pc.fill_null(pairs["kept"], False))
    pairs = pairs.filter(real)
    columns = {"prompt": _messages("user", pairs["prompt"]), "chosen": _messages("assistant", pairs["chosen"]),
               "rejected": _messages("assistant", pairs["rejected"]), "prompt_text": pairs["prompt"]}
    for name in pairs.column_names:
        if name not in ("prompt", "chosen", "rejected"):
            columns[name] = pairs[name]
    return pa.table(columns)


def export_pairs(run_dir: str | Path, out: str | Path, iterations: list[int] | None = None,
                 kept_only: bool = False) -> dict[str, Any]:
    """Write the run's pairs to the new folder ``out`` with ``DatasetDict.save_to_disk``: one split per iteration
    (``iter_001``, ...), read back with ``datasets.load_from_disk``. Returns {split: rows}.

    ``iterations``: which (default: every iteration whose select stage is committed). Raises RunDirError for a run
    dir that is not one, ExportError for an iteration without pairs or an ``out`` that exists and is not empty.
    """
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable

    rd = RunDir(run_dir)
    state = rd.load_state()
    have = sorted(int(k[5:8]) for k in state["stages"] if k.endswith("/select"))
    wanted = have if iterations is None else sorted(set(iterations))
    missing = [t for t in wanted if t not in have]
    if missing or not wanted:
        raise ExportError(f"--iterations: {rd.root} has no committed pairs for iteration(s) "
                          f"{', '.join(map(str, missing)) or '(none asked)'} (committed: {', '.join(map(str, have)) or 'none'})")
    target = Path(out).absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"--out {target}: exists and is not an empty folder; name a new one (nothing is overwritten)")
    splits = {}
    for t in wanted:
        rd.record(rd.stage_key(t, "select"))  # the committed pairs, sha256-verified
        splits[rd.iter_dir(t)] = Dataset(InMemoryTable(
            pairs_dataset_table(rd.read_table(f"{rd.iter_dir(t)}/pairs.parquet"), kept_only)))
    staged = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        DatasetDict(splits).save_to_disk(str(staged))
        if target.exists():
            target.rmdir()
        os.replace(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return {name: ds.num_rows for name, ds in splits.items()}

