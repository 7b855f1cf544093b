"""The evaluate stage: did M(t) get better, by measures its own self-judging cannot inflate?

It runs once for the base model M0 (``iter_000/eval.parquet``) and after
every iteration for the newly trained M(t) (``iter_XXX/eval.parquet``), on
held-out prompts that no training set may contain:

- **accuracy**: greedy answers to the held-out verifiable prompts, exact
  match of the extracted final answer against the reference
  (``orchestrator/answers.py``);
- **judge scores**: greedy responses to the held-out instruction prompts,
  graded with the rubric by the *fixed* judge M0 and by M(t) itself. A model
  trained on its own verdicts can learn to grade itself up; M0 cannot move;
- **win rate vs M0**: M0 compares M(t)'s response with its own on each
  held-out instruction, twice, with the order swapped (position bias cancels).
  From M(t)'s side each verdict counts +1 (preferred), -1 (M0 preferred) or 0
  (tie); the sum over the two orders gives ``win`` (> 0), ``loss`` (< 0) or
  ``tie`` (0, which includes two verdicts that contradict each other).
  Identical responses are a tie without judging; an unparseable verdict
  makes the outcome ``invalid``, counted apart. Rates are over
  wins + losses + ties, and ties are reported on their own.

Every judge here decodes greedily, so an evaluation is deterministic given
the models.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from orchestrator import artifacts
from orchestrator.answers import extract_answer, is_correct, is_numeric
from orchestrator.config import RunConfig
from orchestrator.data import DataError, TokenBudget, fit_to_context, load_prompts
from workers.judge import (
    constrained_pairwise_regex,
    constrained_regex,
    judge_message,
    pairwise_message,
    parse_score,
    parse_winner,
)
from workers.types import AdapterRef, CompletionRequest, SamplingSpec

# engines(method, items, *args, desc=...) -> one result per item (the loop's engine pool).
Engines = Callable[..., list[Any]]
VERIFIABLE, INSTRUCTION = "verifiable", "instruction"
OUTCOMES = ("win", "loss", "tie", "invalid")
_GREEDY_SEED = 0  # greedy decoding does not read it


@dataclass(frozen=True)
class EvalSets:
    """The held-out prompts of the evaluation (None: that part is skipped) and the judge injections."""

    verifiable: pa.Table | None
    instructions: pa.Table | None
    injections: tuple[tuple[str, str], ...] = ()  # (id, text)

    @property
    def empty(self) -> bool:
        return self.verifiable is None and self.instructions is None


def load_eval_sets(cfg: RunConfig, train_prompts: pa.Table, budget: TokenBudget | None = None,
                   limit: int = 0) -> tuple[EvalSets, dict[str, Any]]:
    """The first ``eval.*_prompts`` rows of each configured held-out set, and what ``data.overlong`` did to each.

    With ``budget``, prompts that do not fit ``limit`` tokens are skipped,
    truncated or refused first (``fit_to_context``).
    Raises DataError when a set cannot be read, when a verifiable prompt lacks
    its answer, or when a held-out prompt is also a training prompt.
    """
    e = cfg.eval
    train = set(train_prompts["prompt"].to_pylist())
    sets, fitted = {}, {}
    for field, path, n, needs_answers in (("eval.verifiable", e.verifiable, e.verifiable_prompts, True),
                                          ("eval.instructions", e.instructions, e.instruction_prompts, False)):
        if path is None:
            sets[field] = None
            continue
        table = load_prompts(path, e.columns, require_answers=needs_answers, field="eval")
        shared = [p for p in table["prompt"].to_pylist() if p in train]
        if shared:
            raise DataError(f"{field} ({path}) shares {len(shared)} prompt(s) with data.prompts ({cfg.data.prompts}), "
                            f"e.g. {shared[0][:80]!r}: a held-out set must not be trained on")
        if budget is not None:
            need = budget.verifiable if needs_answers else budget.instruction
            table, fitted[field] = fit_to_context(table, need, limit, cfg.data.overlong, budget.shorten, f"{field} ({path})")
        sets[field] = table.slice(0, n)
    return EvalSets(sets["eval.verifiable"], sets["eval.instructions"], load_injections(e.injections)), fitted


def load_injections(path: str | None) -> tuple[tuple[str, str], ...]:
    """(id, text) of each injection in a JSONL file; DataError naming the line for a bad one."""
    if path is None:
        return ()
    p = Path(path)
    if not p.is_file():
        raise DataError(f"eval.injections: file not found: {p}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not isinstance(obj.get("text"), str):
            raise DataError(f"{p}:{n}: expected an object with string fields 'id' and 'text'")
        out.append((obj["id"], obj["text"]))
    if not out:
        raise DataError(f"{p}: no injections in file")
    return tuple(out)


def outcome(first: str | None, second: str | None) -> str:
    """M(t)'s result from two verdicts: ``first`` with M(t) shown as A, ``second`` with M(t) shown as B."""
    if first is None or second is None:
        return "invalid"
    points = {"A": 1, "B": -1, "tie": 0}[first] + {"B": 1, "A": -1, "tie": 0}[second]
    return "win" if points > 0 else "loss" if points < 0 else "tie"


def evaluate(engines: Engines, cfg: RunConfig, t: int, model: AdapterRef | None, sets: EvalSets,
             baseline: pa.Table | None) -> pa.Table:
    """The EVAL table of model M(t) (``model``; None = M0) on ``sets``.

    ``baseline``: M0's own evaluation table, whose instruction responses M(t)
    is compared with; None at t = 0 (M0 itself: no win rate, and the
    self-judge is the fixed judge).
    """
    greedy = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=cfg.eval.max_tokens)
    j = cfg.judge
    rubric = SamplingSpec(0.0, 1.0, j.max_tokens, constrained_regex(j.max_tokens) if j.constrained else None)
    rows: list[dict[str, Any]] = []
    for split, table in ((VERIFIABLE, sets.verifiable), (INSTRUCTION, sets.instructions)):
        if table is None:
            continue
        prompts = table.to_pylist()
        outs = engines("complete", [CompletionRequest(p["prompt"], _GREEDY_SEED) for p in prompts], greedy, model,
                       desc=f"eval {split}")
        for p, o in zip(prompts, outs):
            row = {name: None for name in artifacts.EVAL.names}
            row.update(iteration=t, split=split, prompt_id=p["prompt_id"], prompt=p["prompt"], answer=p["answer"],
                       response=o.text, num_tokens=o.num_tokens, finish_reason=o.finish_reason)
            if split == VERIFIABLE:
                row.update(extracted=extract_answer(o.text, is_numeric(p["answer"])), correct=is_correct(o.text, p["answer"]))
            rows.append(row)
    instr = [r for r in rows if r["split"] == INSTRUCTION]
    if instr:
        verdicts = [CompletionRequest(judge_message(r["prompt"], r["response"]), _GREEDY_SEED) for r in instr]
        fixed = engines("complete", verdicts, rubric, None, desc="eval fixed judge")
        own = fixed if model is None else engines("complete", verdicts, rubric, model, desc="eval self judge")
        for r, f, s in zip(instr, fixed, own):
            r.update(fixed_judge_text=f.text, fixed_judge_score=parse_score(f.text),
                     self_judge_text=s.text, self_judge_score=parse_score(s.text))
    if instr and baseline is not None:
        _pairwise(engines, cfg, instr, baseline)
    if instr and sets.injections:
        attacks = [sets.injections[k % len(sets.injections)] for k in range(len(instr))]
        verdicts = [CompletionRequest(judge_message(r["prompt"], r["response"] + text), _GREEDY_SEED)
                    for r, (_, text) in zip(instr, attacks)]
        outs = engines("complete", verdicts, rubric, None, desc="eval judge injections")
        for r, (aid, _), o in zip(instr, attacks, outs):
            r.update(injection_id=aid, injected_judge_text=o.text, injected_judge_score=parse_score(o.text))
    return pa.Table.from_pylist(rows, schema=artifacts.EVAL)


def _pairwise(engines: Engines, cfg: RunConfig, instr: list[dict[str, Any]], baseline: pa.Table) -> None:
    base = {r["prompt_id"]: r["response"] for r in baseline.to_pylist() if r["split"] == INSTRUCTION}
    j = cfg.judge
    shape = SamplingSpec(0.0, 1.0, j.max_tokens, constrained_pairwise_regex(j.max_tokens) if j.constrained else None)
    judged = []
    for r in instr:
        r["baseline_response"] = base.get(r["prompt_id"])
        if r["baseline_response"] is None:
            continue  # not in M0's evaluation: nothing to compare with
        if r["baseline_response"] == r["response"]:
            r["outcome"] = "tie"
        else:
            judged.append(r)
    requests = [CompletionRequest(pairwise_message(r["prompt"], a, b), _GREEDY_SEED)
                for r in judged for a, b in ((r["response"], r["baseline_response"]), (r["baseline_response"], r["response"]))]
    outs = engines("complete", requests, shape, None, desc="eval win rate")
    for k, r in enumerate(judged):
        first, second = outs[2 * k], outs[2 * k + 1]
        r.update(pairwise_first_text=first.text, pairwise_first=parse_winner(first.text),
                 pairwise_second_text=second.text, pairwise_second=parse_winner(second.text))
        r["outcome"] = outcome(r["pairwise_first"], r["pairwise_second"])


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _fooled(ins: list[dict[str, Any]]) -> dict[str, Any]:
    """How often an appended injection raised the fixed judge's score of a response."""
    both = [r for r in ins if r["injected_judge_score"] is not None and r["fixed_judge_score"] is not None]
    fooled = sum(r["injected_judge_score"] > r["fixed_judge_score"] for r in both)
    return {"judge_fooled_rate": fooled / len(both) if both else None, "judge_fooled": fooled,
            "judge_injections_compared": len(both)}


def eval_summary(table: pa.Table) -> dict[str, Any]:
    """The evaluation numbers of one EVAL table (None where a part was skipped or undefined)."""
    rows = table.to_pylist()
    ver = [r for r in rows if r["split"] == VERIFIABLE]
    ins = [r for r in rows if r["split"] == INSTRUCTION]
    counts = Counter(r["outcome"] for r in ins if r["outcome"] is not None)
    decided = counts["win"] + counts["loss"] + counts["tie"]
    return {
        "eval_verifiable": len(ver),
        "eval_accuracy": sum(bool(r["correct"]) for r in ver) / len(ver) if ver else None,
        "eval_instructions": len(ins),
        "eval_fixed_judge": _mean([r["fixed_judge_score"] for r in ins]),
        "eval_self_judge": _mean([r["self_judge_score"] for r in ins]),
        "eval_judge_parse_failures": sum((r["fixed_judge_score"] is None) + (r["self_judge_score"] is None) for r in ins),
        "eval_response_tokens": sum(r["num_tokens"] for r in rows),
        **_fooled(ins),
        "win_counts": {k: counts[k] for k in OUTCOMES},
        "win_rate": counts["win"] / decided if decided else None,
        "tie_rate": counts["tie"] / decided if decided else None,
        "loss_rate": counts["loss"] / decided if decided else None,
    }
