"""What leaves a run for other tools: ``selfreward export`` (M(t) as a Hugging Face folder that vLLM and
transformers load, the adapter merged in; or the PEFT adapter with its base recorded) and ``selfreward export-pairs``
(the preference pairs as a ``datasets`` DatasetDict in TRL's conversational format, with every trust column).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
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


def _into_new_folder(out: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(folder)`` on a staging folder beside ``out``, then move it to ``out``: never a half-written
    export, nothing overwritten (ExportError when ``out`` exists and is not an empty folder)."""
    target = Path(out).absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"--out {target}: exists and is not an empty folder; name a new one (nothing is overwritten)")
    staged = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(staged)
        if target.exists():
            target.rmdir()
        os.replace(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return target


def export_model(run_dir: str | Path, out: str | Path, iteration: int | None = None,
                 adapter_only: bool = False) -> dict[str, Any]:
    """Write M(``iteration``) (default: the last trained) of the run to the new folder ``out``; returns what was
    written (also saved as ``selfreward-export.json`` in it).

    Merged (default): the base model's folder with the adapter merged into its weights, each tensor in the base's
    dtype, its tokenizer, chat template and generation config copied: vLLM and transformers' auto classes load it. ``adapter_only``: the PEFT adapter, its
    ``base_model_name_or_path`` set to the base model's folder. The adapter is the committed one (sha256-verified)
    and the base model must still be the one the run trained on (its fingerprint).
    """
    from orchestrator.models import model_fingerprint, resolve_model_path
    from workers.merge import save_merged
    from workers.storage import local_copy

    rd = RunDir(run_dir)
    state = rd.load_state()
    trained = sorted(int(k[5:8]) for k in state["stages"] if k.endswith("/train"))
    t = trained[-1] if iteration is None and trained else iteration
    if t not in trained:
        raise ExportError(f"--iteration {'(last)' if iteration is None else iteration}: {rd.root} has no trained model "
                          f"there (trained: {', '.join(map(str, trained)) or 'none'}); M0 is the base model itself")
    rec = rd.record(rd.stage_key(t, "train"))
    base = resolve_model_path(rd.frozen_config().model.path)
    fingerprint = model_fingerprint(base)
    if state.get("model_fingerprint") and state["model_fingerprint"] != fingerprint:
        raise ExportError(f"model.path of {rd.root} ({base}) now holds another model than the run trained on "
                          f"(fingerprint {fingerprint[:12]} != {state['model_fingerprint'][:12]})")
    adapter = local_copy(rd.storage.uri(f"{rd.iter_dir(t)}/adapter"), rec.sha256)
    info = {"run_dir": rd.root, "iteration": t, "adapter_sha256": rec.sha256, "base_model": str(base),
            "base_fingerprint": fingerprint, "merged": not adapter_only}

    def write(folder: Path) -> None:
        if adapter_only:
            shutil.copytree(adapter, folder)
            config = json.loads((folder / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = str(base)
            (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        else:
            save_merged(base, adapter, folder)
        (folder / "selfreward-export.json").write_text(json.dumps(info, indent=1) + "\n")

    info["out"] = str(_into_new_folder(out, write))
    return info


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
    splits = {}
    for t in wanted:
        rd.record(rd.stage_key(t, "select"))  # the committed pairs, sha256-verified
        splits[rd.iter_dir(t)] = Dataset(InMemoryTable(
            pairs_dataset_table(rd.read_table(f"{rd.iter_dir(t)}/pairs.parquet"), kept_only)))
    _into_new_folder(out, lambda folder: DatasetDict(splits).save_to_disk(str(folder)))
    return {name: ds.num_rows for name, ds in splits.items()}

