"""The artifact contract: the columns (and types) each Parquet artifact must have.

Tables are built against these schemas, so a stage cannot commit a table
that breaks the contract; ``check_contract`` verifies a file read back.
"""

from __future__ import annotations

import pyarrow as pa

GENERATIONS = pa.schema([
    ("iteration", pa.int32()), ("prompt_id", pa.string()), ("prompt", pa.string()),
    ("sample_idx", pa.int32()), ("response", pa.string()), ("num_tokens", pa.int32()),
    ("finish_reason", pa.string()), ("seed", pa.int64()),
])

JUDGMENTS = pa.schema([
    ("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("judge_model", pa.string()),
    ("judge_idx", pa.int32()), ("judge_text", pa.string()), ("score", pa.float64()),
    ("seed", pa.int64()), ("num_tokens", pa.int32()),
])

REWARDS = pa.schema([
    ("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("judge_mean", pa.float64()),
    ("judge_std", pa.float64()), ("judge_valid", pa.int32()), ("judge_mean_prev", pa.float64()),
    ("logp_policy", pa.float64()), ("logp_ref", pa.float64()), ("num_tokens", pa.int32()),
])

PAIRS = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()),
    ("rejected", pa.string()), ("chosen_idx", pa.int32()), ("rejected_idx", pa.int32()),
    ("margin", pa.float64()), ("consistency", pa.float64()), ("p_correct", pa.float64()),
    ("weight", pa.float64()), ("kept", pa.bool_()), ("drop_reason", pa.string()),
    ("chosen_finish_reason", pa.string()), ("rejected_finish_reason", pa.string()),
])

CONTRACT = {"generations": GENERATIONS, "judgments": JUDGMENTS, "rewards": REWARDS, "pairs": PAIRS}


class ContractError(ValueError):
    """A table lacks a contract column or has it with the wrong type."""


def check_contract(table: pa.Table, kind: str, source: str = "") -> None:
    """Raise ContractError naming the artifact and column when ``table`` breaks the contract."""
    where = f" in {source}" if source else ""
    for f in CONTRACT[kind]:
        if f.name not in table.schema.names:
            raise ContractError(f"{kind}{where}: missing column {f.name!r}")
        got = table.schema.field(f.name).type
        if got != f.type:
            raise ContractError(f"{kind}{where}: column {f.name!r} is {got}, expected {f.type}")
