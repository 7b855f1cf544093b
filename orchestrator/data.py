"""Prompt sets: loading and validation in every supported format, and the prompts each iteration draws.

Formats: JSONL (one JSON object per line), Parquet, CSV (with a header row)
and a directory written by ``datasets``' ``save_to_disk`` (read with
``datasets.load_from_disk``: the ``datasets`` extra). A column
mapping (``ColumnsConfig``) says which column holds the prompt, the optional
reference answer and the optional id. Whatever the format, a bad file stops
the run before any work with a ``DataError`` that names the file, the row
(and line, for text formats) and the column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import hub
from orchestrator.config import ColumnsConfig, RunConfig
from orchestrator.evaluation.answers import KINDS
from orchestrator.inputs import (
    MAX_PROMPT_CHARS,
    MAX_PROMPT_FILE_BYTES,
    MAX_PROMPTS,
    check_input_path,
    located,
    os_problem,
    shown,
    unicode_problem,
)
from orchestrator.rewards.judge import judge_message, pairwise_message
from workers.tokens import most_tokens, prompt_token_ids, template_tokens

T = TypeVar("T")


class DataError(ValueError):
    """A prompt file is unusable; the message names the file, the row and the column."""


PROMPT_SCHEMA = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("answer", pa.string()), ("kind", pa.string())])
FORMATS = "a .jsonl, .parquet or .csv file, or a directory written by datasets' save_to_disk"
_DEFAULTS = ColumnsConfig()


def prompt_id(text: str) -> str:
    """Stable id of a prompt: the first 16 hex digits of its sha256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --- readers: (where, row) pairs, where = "FILE:LINE" or "FILE: row N" ----------------


def read_text_file(p: Path) -> str:
    """A text file's contents: a regular file (never a FIFO or a device, which could block or never end), UTF-8
    with an optional byte-order mark. DataError naming the file (and the line of invalid UTF-8)."""
    if not p.is_file():
        raise DataError(f"{p}: not a regular file (a FIFO, a device or a socket is never read)")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot be read ({os_problem(e)})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def json_lines(p: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file; DataError naming the line for a bad one.

    Lines end at newlines only: U+2028 and other Unicode line separators are valid inside a JSON string.
    """
    for n, line in enumerate(read_text_file(p).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{n}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{p}:{n}: JSON nested too deeply") from None


def _jsonl(p: Path) -> tuple[Iterator[tuple[str, dict[str, Any]]], set[str] | None]:
    lines = list(json_lines(p))

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for n, obj in lines:
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield f"{p}:{n}", obj

    return rows(), None  # JSON objects may each have other fields


def _csv(p: Path) -> tuple[Iterator[tuple[str, dict[str, Any]]], set[str] | None]:
    text = read_text_file(p)
    # A field as long as a prompt may be (the csv module stops at 131,072 characters by default).
    csv.field_size_limit(max(csv.field_size_limit(), MAX_PROMPT_CHARS + 1))
    # strict: an unclosed quote is an error at the end of the file, not a field that swallows the rest of it.
    reader = csv.DictReader(text.splitlines(keepends=True), strict=True)
    try:
        names = reader.fieldnames or []
    except csv.Error as e:
        raise DataError(f"{p}: line 1: not a valid CSV header ({e})") from None
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(f"{p}: the header names column(s) {dup} more than once")
    header = set(names)

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            for n, row in enumerate(reader, start=1):
                if None in row:
                    raise DataError(f"{p}: row {n} (line {reader.line_num}): more fields than the header has")
                # CSV has no null: an empty answer or id cell means none.
                yield f"{p}: row {n} (line {reader.line_num})", {k: (v if v != "" else None) for k, v in row.items()}
        except csv.Error as e:
            raise DataError(f"{p}: line {reader.line_num}: not valid CSV ({e})") from e

    return rows(), header


def _table_rows(p: Path, table: pa.Table) -> tuple[Iterator[tuple[str, dict[str, Any]]], set[str]]:
    for name in table.schema.names:
        col = table[name]
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            try:
                col.validate(full=True)  # invalid UTF-8 in a string column
            except pa.ArrowInvalid:
                bad = next(n for n, v in enumerate(col.cast(pa.binary()).to_pylist(), start=1)
                           if v is not None and not _utf8(v))
                raise DataError(f"{p}: row {bad}: column {name!r} is not valid UTF-8") from None

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for n, row in enumerate(table.to_pylist(), start=1):
            yield f"{p}: row {n}", row

    return rows(), set(table.schema.names)


def _parquet(p: Path) -> tuple[Iterator[tuple[str, dict[str, Any]]], set[str]]:
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{p}: not a readable Parquet file ({e})") from e
    return _table_rows(p, table)


def _saved_dataset(p: Path) -> tuple[Iterator[tuple[str, dict[str, Any]]], set[str]]:
    if (p / "dataset_dict.json").is_file():
        splits = sorted(q.name for q in p.iterdir() if q.is_dir())
        raise DataError(f"{p}: a DatasetDict with splits {splits}; point the path at one split, e.g. {p / splits[0]}"
                        if splits else f"{p}: an empty DatasetDict")
    if not (p / "state.json").is_file():
        raise DataError(f"{p}: a directory without state.json: not written by datasets' save_to_disk ({FORMATS} expected)")
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(f"{p}: a folder written by datasets' save_to_disk is read with the datasets package, which is "
                        "not installed (pip install 'selfreward[datasets]')") from None
    try:
        dataset = load_from_disk(str(p))
    except Exception as e:  # whatever datasets raises for a folder it cannot read is this input's fault
        raise DataError(f"{p}: datasets cannot load it ({type(e).__name__}: {e})") from None
    if not hasattr(dataset, "data"):
        raise DataError(f"{p}: not a single dataset")
    return _table_rows(p, dataset.data.table)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


_READERS = {".jsonl": _jsonl, ".ndjson": _jsonl, ".csv": _csv, ".parquet": _parquet}


# --- validation --------------------------------------------------------------------


def _optional_column(name: str | None, default: str | None, present: set[str] | None, p: Path, field: str) -> str | None:
    if name is None:
        return None
    if present is not None and name not in present:
        if name != default:
            raise DataError(f"{p}: no column {name!r} (set as {field}); the file has {sorted(present)}")
        return None
    return name


def _text(value: Any, where: str, column: str, kinds: tuple[type, ...]) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise DataError(f"{where}: column {column!r} must be {' or '.join(k.__name__ for k in kinds)}, "
                        f"got {type(value).__name__} {value!r}")
    return str(value)


def load_prompts(path: str | Path, columns: ColumnsConfig = _DEFAULTS, require_answers: bool = False,
                 field: str = "data", what: str = "data.prompts") -> pa.Table:
    """Read and validate a prompt set; a table with the PROMPT_SCHEMA columns, in file order.

    ``field``: the config section the columns come from, ``what``: the config field that names the path (both
    named in errors). Raises DataError for a path the OS refuses, a missing, empty, unreadable or too large file,
    an unknown format, a missing column, a null, empty, non-text or too long prompt, text that is not valid Unicode,
    a missing answer (with ``require_answers``), duplicate ids or duplicate prompts (after Unicode normalisation),
    more than ``MAX_PROMPTS`` prompts.
    """
    p = hub.dataset_file(str(path), what, DataError) if hub.is_dataset_file(str(path)) else located(path)
    st = check_input_path(p, what, DataError)
    if not p.is_dir() and not p.is_file():
        raise DataError(f"{p}: not a regular file (a FIFO, a device or a socket is never read)")
    if p.is_file() and st.st_size > MAX_PROMPT_FILE_BYTES:
        raise DataError(f"{what} ({p}): {st.st_size:,} bytes; a prompt file may hold at most "
                        f"{MAX_PROMPT_FILE_BYTES:,} (split it, or keep the prompts a run uses)")
    if p.is_dir():
        rows, present = _saved_dataset(p)
    else:
        reader = _READERS.get(p.suffix.lower())
        if reader is None:
            raise DataError(f"{p}: unknown prompt file format {p.suffix or '(no suffix)'!r}; expected {FORMATS}")
        rows, present = reader(p)
    if present is not None and columns.prompt not in present:
        raise DataError(f"{p}: no column {columns.prompt!r} (set as {field}.columns.prompt); the file has {sorted(present)}")
    answer_col = _optional_column(columns.answer, _DEFAULTS.answer, present, p, f"{field}.columns.answer")
    kind_col = _optional_column(columns.kind, _DEFAULTS.kind, present, p, f"{field}.columns.kind")
    id_col = _optional_column(columns.id, _DEFAULTS.id, present, p, f"{field}.columns.id")
    out: list[dict[str, str | None]] = []
    seen_ids: dict[str, str] = {}
    seen_text: dict[str, str] = {}
    for where, row in checking(rows, f"reading {what}"):
        if len(out) == MAX_PROMPTS:
            raise DataError(f"{where}: more than {MAX_PROMPTS:,} prompts in {what} ({p}); a run draws "
                            f"iterations x data.prompts_per_iteration of them: keep those (or split the file)")
        text = row.get(columns.prompt)
        if not isinstance(text, str) or not visible(text):
            raise DataError(f"{where}: column {columns.prompt!r} must be a string with visible text, got {shown(text)}")
        answer = _text(row.get(answer_col), where, answer_col, (str, int, float)) if answer_col else None
        if isinstance(row.get(answer_col), float) and not np.isfinite(row[answer_col]):
            raise DataError(f"{where}: column {answer_col!r} is {row[answer_col]}, not an answer")
        if require_answers and (answer is None or not answer.strip()):
            raise DataError(f"{where}: column {answer_col or columns.answer!r} must hold the reference answer "
                            f"(this set is scored by exact match), got {answer!r}")
        kind = _text(row.get(kind_col), where, kind_col, (str,)) if kind_col else None
        if kind is not None and kind.strip() and kind not in KINDS:
            raise DataError(f"{where}: column {kind_col!r} is {shown(kind)}, a kind without validated grading rules; "
                            f"expected one of {', '.join(KINDS)} or empty (then only explicit answers are graded)")
        given = _text(row.get(id_col), where, id_col, (str, int)) if id_col else None
        if given is not None and not visible(given):
            raise DataError(f"{where}: column {id_col!r} is {given!r}, an empty id (leave it null to derive one)")
        for column, value in ((columns.prompt, text), (answer_col, answer), (id_col, given)):
            problem = value is not None and (unicode_problem(value) or (
                len(value) > MAX_PROMPT_CHARS and f"{len(value):,} characters long; at most {MAX_PROMPT_CHARS:,}"))
            if problem:
                raise DataError(f"{where}: column {column!r} is {problem}")
        pid = given if given is not None else prompt_id(text)
        # Texts that differ only in how their characters are composed (NFC vs NFD) are the same text.
        id_key, text_key = unicodedata.normalize("NFC", pid), unicodedata.normalize("NFC", text)
        if id_key in seen_ids:
            raise DataError(f"{where}: duplicate prompt id {shown(pid)} (first at {seen_ids[id_key]})")
        if text_key in seen_text:
            raise DataError(f"{where}: duplicate prompt (first at {seen_text[text_key]}): {text[:80]!r}")
        seen_ids[id_key] = seen_text[text_key] = where
        out.append({"prompt_id": pid, "prompt": text, "answer": answer, "kind": kind or None})
    if not out:
        raise DataError(f"{p}: no prompts in file")
    return pa.Table.from_pylist(out, schema=PROMPT_SCHEMA)


def checking(items: Iterable[T], desc: str) -> Iterator[T]:
    """``items``, with a progress bar on stderr once the check has taken more than a few seconds."""
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, unit=" prompts", file=sys.stderr, delay=3.0, mininterval=1.0, leave=False))


def visible(text: str) -> bool:
    """Whether ``text`` has a character that shows: not only whitespace, control, format (zero-width) or unassigned."""
    return any(unicodedata.category(c)[0] not in "ZC" for c in text)


_KEPT_MARKS = set("*/\\%#&@")  # punctuation by Unicode's reckoning that carries meaning in a task ("9 * 4", "50%")


def normalised(text: str) -> str:
    """A prompt with case, whitespace and punctuation folded (NFKC first), so near-duplicates compare equal.

    Folded: sentence punctuation and quotes (Unicode Po, Pi, Pf), runs of whitespace and control characters. Kept:
    dashes, operators, brackets and the marks in ``_KEPT_MARKS``, so "9 - 4", "9 + 4" and "(2 + 3) * 4" stay apart.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for c in folded:
        cat = unicodedata.category(c)
        out.append(" " if (cat in ("Po", "Pi", "Pf") and c not in _KEPT_MARKS) or cat[0] in "ZC" else c)
    return " ".join("".join(out).split())


def shared_prompts(held_out: pa.Table, training: pa.Table) -> list[tuple[int, int]]:
    """(held-out row, training row), 1-based, of every held-out prompt that equals a training prompt once normalised."""
    first: dict[str, int] = {}
    for i, text in enumerate(training["prompt"].to_pylist(), start=1):
        first.setdefault(normalised(text), i)
    return [(i, first[key]) for i, text in enumerate(held_out["prompt"].to_pylist(), start=1)
            if (key := normalised(text)) in first]


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


def fit_to_context(prompts: pa.Table, need: Callable[[str], int], limit: int, policy: str, shorten: Callable[[str, int], str],
                   source: str) -> tuple[pa.Table, dict[str, int | str]]:
    """Apply the ``data.overlong`` policy to the prompts whose ``need(text)`` tokens exceed ``limit``.

    ``shorten(text, tokens)``: the text with its last ``tokens`` tokens cut.
    'truncate' cuts the fewest tokens that make the prompt fit (a prompt that
    cannot fit even when cut to nothing is skipped); 'skip' drops it; 'error'
    raises DataError naming the source, the prompt id and the token counts.
    Returns the kept prompts and the counts {policy, kept, skipped, truncated}.
    """
    kept, skipped, truncated = [], 0, 0
    for row in checking(prompts.to_pylist(), f"sizing {source}"):
        n = need(row["prompt"])
        if n <= limit:
            kept.append(row)
            continue
        if policy == "error":
            raise DataError(f"{source}: prompt {row['prompt_id']!r} needs {n} tokens of context but model.max_model_len "
                            f"is {limit} (data.overlong=error; 'skip' or 'truncate' handle it)")
        text = None
        if policy == "truncate":
            cut = n - limit
            while (candidate := shorten(row["prompt"], cut)).strip():
                if need(candidate) <= limit:
                    text = candidate
                    break
                cut += max(1, need(candidate) - limit)
        if text is None:
            skipped += 1
        else:
            truncated += 1
            kept.append({**row, "prompt": text})
    if not kept:
        raise DataError(f"{source}: no prompt fits model.max_model_len={limit} with the configured max_tokens")
    return pa.Table.from_pylist(kept, schema=PROMPT_SCHEMA), {"policy": policy, "kept": len(kept), "skipped": skipped,
                                                              "truncated": truncated}


@dataclass(frozen=True)
class TokenBudget:
    """Tokens of context each use of a prompt takes, for ``fit_to_context``.

    A judge prompt is sized for the longest response it can quote (the
    response's max_tokens, plus ``MARGIN`` for re-tokenizing the decoded
    text) and the longest verdict (judge.max_tokens).

    Counting is exact where it decides: each use is first bounded by the
    bytes of its text (``workers.tokens.most_tokens``), and only a use whose
    bound passes ``limit`` is encoded. So a need at most ``limit`` may be a
    bound, and a need above it is the exact count.
    """

    tokenizer: Any
    generation: int  # generation.max_tokens
    judge: int  # judge.max_tokens
    eval_answer: int  # eval.max_tokens
    limit: int  # model.max_model_len
    rubric: str  # judge.rubric_template
    pairwise: str  # judge.pairwise_template
    MARGIN = 8

    @staticmethod
    def of(cfg: RunConfig, tokenizer: Any) -> "TokenBudget":
        return TokenBudget(tokenizer, cfg.generation.max_tokens, cfg.judge.max_tokens, cfg.eval.max_tokens,
                           cfg.model.max_model_len, cfg.judge.rubric_template, cfg.judge.pairwise_template)

    def _need(self, text: str, extra: int) -> int:
        """Tokens of ``text`` as a chat message plus ``extra``: a bound when that fits ``limit``, else exact."""
        bound = most_tokens(self.tokenizer, text)
        if bound is not None and template_tokens(self.tokenizer) + bound + extra <= self.limit:
            return template_tokens(self.tokenizer) + bound + extra
        return len(prompt_token_ids(self.tokenizer, text)) + extra

    def training(self, prompt: str) -> int:
        return max(self._need(prompt, self.generation),
                   self._need(judge_message(prompt, "", self.rubric), self.generation + self.MARGIN + self.judge))

    def verifiable(self, prompt: str) -> int:
        return self._need(prompt, self.eval_answer)

    def instruction(self, prompt: str) -> int:
        answer = self.eval_answer + self.MARGIN
        return max(self._need(prompt, self.eval_answer), self._need(judge_message(prompt, "", self.rubric), answer + self.judge),
                   self._need(pairwise_message(prompt, "", "", self.pairwise), 2 * answer + self.judge))

    def shorten(self, text: str, tokens: int) -> str:
        ids = list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)
        return self.tokenizer.decode(ids[: max(0, len(ids) - tokens)])
