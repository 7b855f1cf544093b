"""Prompt sets: loading, validation, and the prompts each iteration draws."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa


class DataError(ValueError):
    """A prompt file is unusable; the message names the file, the line and the field."""


PROMPT_SCHEMA = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("answer", pa.string())])


def prompt_id(text: str) -> str:
    """Stable id of a prompt: the first 16 hex digits of its sha256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_prompts(path: str | Path) -> pa.Table:
    """Read a JSONL prompt file: one object per line with 'prompt', optional 'id' and 'answer'.

    Raises DataError for a missing or empty file, invalid JSON, a missing or
    empty prompt, or duplicate ids.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prompt file not found: {p}")
    rows: list[dict[str, str | None]] = []
    seen: dict[str, int] = {}
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not valid UTF-8 ({e})") from e
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{p}:{n}: expected a JSON object, got {type(obj).__name__}")
        text = obj.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{p}:{n}: field 'prompt' must be a non-empty string, got {text!r}")
        pid = str(obj["id"]) if obj.get("id") is not None else prompt_id(text)
        if pid in seen:
            raise DataError(f"{p}:{n}: duplicate prompt id {pid!r} (first on line {seen[pid]})")
        seen[pid] = n
        answer = obj.get("answer")
        rows.append({"prompt_id": pid, "prompt": text, "answer": None if answer is None else str(answer)})
    if not rows:
        raise DataError(f"{p}: no prompts in file")
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def prompts_for_iteration(prompts: pa.Table, iteration: int, per_iteration: int, seed: int) -> pa.Table:
    """The prompts of iteration ``iteration`` (1-based).

    A seeded permutation of the set is walked in consecutive windows, so
    iterations see fresh prompts until the set is exhausted, then wrap around.
    """
    n = prompts.num_rows
    order = np.random.default_rng(seed).permutation(n)
    start = (iteration - 1) * per_iteration
    idx = [int(order[(start + k) % n]) for k in range(min(per_iteration, n))]
    return prompts.take(idx)
