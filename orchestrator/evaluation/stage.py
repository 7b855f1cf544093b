"""The evaluate stage: did M(t) get better, by measures its own self-judging cannot inflate?

It runs once for the base model M0 (``iter_000/eval.parquet``) and after
every iteration for the newly trained M(t) (``iter_XXX/eval.parquet``), on
held-out prompts that no training set may contain:

- **accuracy**: greedy answers to the held-out verifiable prompts, graded
  against the reference (``orchestrator/evaluation/answers.py``; the grading rule is
  kept per row, and an ungradable answer counts as incorrect), with its
  paired difference from M0's on the same prompts;
- **judge scores**: greedy responses to the held-out instruction prompts,
  graded with the rubric by the *fixed* judge M0 and by M(t) itself. A model
  trained on its own verdicts can learn to grade itself up; M0 cannot move;
- **win rate vs M0**: M0 compares M(t)'s response with its own on each
  held-out instruction, twice, with the order swapped. By default
  (``eval.pairwise_verdict: probability``) each order's verdict is the
  judge's next-token probability of "A" vs "B" after "Winner:", and the two
  are averaged from M(t)'s side, which cancels a judge's position bias: the
  outcome is ``win`` when that preference exceeds 0.5 by more than
  ``TIE_BAND``, ``loss`` when it falls short by more, else ``tie``. With
  ``sampled``, each order's verdict is the judge's own text ("Winner: A"),
  +1 / -1 / 0 from M(t)'s side, summed over the orders (contradicting
  verdicts are a tie; an unparseable one makes the outcome ``invalid``,
  counted apart). Identical responses are a tie without judging.
  The judge's **position consistency** (share of judged prompts whose two
  orders name the same response) and **first-position rate** are reported;
  a judge that names one position almost always, or whose orders rarely
  agree, cannot measure a win rate, and the summary says so instead of
  giving one (``DEGENERATE_POSITION_RATE``, ``MIN_POSITION_CONSISTENCY``).

Every judge here decodes greedily, so an evaluation is deterministic given
the models.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from orchestrator.config import RunConfig
from orchestrator.data import DataError, TokenBudget, fit_to_context, json_lines, load_prompts, shared_prompts
from orchestrator.evaluation import stats
from orchestrator.evaluation.answers import grade
from orchestrator.inputs import check_input_path, located, unicode_problem
from orchestrator.rewards.judge import (
    constrained_pairwise_regex,
    constrained_regex,
    judge_message,
    pairwise_message,
    parse_score,
    parse_winner,
    winner_choice,
)
from orchestrator.run import artifacts
from workers.types import AdapterRef, CompletionRequest, SamplingSpec

if TYPE_CHECKING:
    from orchestrator.context import Engines

VERIFIABLE, INSTRUCTION = "verifiable", "instruction"
OUTCOMES = ("win", "loss", "tie", "invalid")
_GREEDY_SEED = 0  # greedy decoding does not read it
TIE_BAND = 0.05  # |P(M(t) preferred) - 0.5| up to this is a tie (probability verdicts)
DEGENERATE_POSITION_RATE = 0.9  # a judge naming one position in at least this share of its verdicts is degenerate
MIN_POSITION_CONSISTENCY = 0.5  # ... and so is one whose two orders agree on fewer prompts than this share


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
    ``train_prompts``: the training set as loaded (before ``fit_to_context``), so rows are the file's.
    Raises DataError when a set cannot be read, when a verifiable prompt lacks
    its answer, or when a held-out prompt is also a training prompt, up to
    case, whitespace and punctuation (naming both files and rows).
    """
    e = cfg.eval
    sets, fitted = {}, {}
    for field, path, n, needs_answers in (("eval.verifiable", e.verifiable, e.verifiable_prompts, True),
                                          ("eval.instructions", e.instructions, e.instruction_prompts, False)):
        if path is None:
            sets[field] = None
            continue
        table = load_prompts(path, e.columns, require_answers=needs_answers, field="eval", what=field)
        shared = shared_prompts(table, train_prompts)
        if shared:
            (held_row, train_row), text = shared[0], table["prompt"][shared[0][0] - 1].as_py()
            raise DataError(f"{field} ({path}) row {held_row} and data.prompts ({cfg.data.prompts}) row {train_row} hold the "
                            f"same prompt once case, whitespace and punctuation are folded ({len(shared)} such prompt(s)), "
                            f"e.g. {text[:80]!r}: a held-out set must not be trained on")
        if budget is not None:
            need = budget.verifiable if needs_answers else budget.instruction
            table, fitted[field] = fit_to_context(table, need, limit, cfg.data.overlong, budget.shorten, f"{field} ({path})")
        sets[field] = table.slice(0, n)
    return EvalSets(sets["eval.verifiable"], sets["eval.instructions"], load_injections(e.injections)), fitted


def load_injections(path: str | None) -> tuple[tuple[str, str], ...]:
    """(id, text) of each injection in a JSONL file; DataError naming the line for a bad one."""
    if path is None:
        return ()
    p = located(path)
    check_input_path(p, "eval.injections", DataError)
    out = []
    for n, obj in json_lines(p):
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not isinstance(obj.get("text"), str):
            raise DataError(f"{p}:{n}: expected an object with string fields 'id' and 'text'")
        problem = unicode_problem(obj["id"] + obj["text"])
        if problem:
            raise DataError(f"{p}:{n}: {problem}")
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
        outs = engines.complete([CompletionRequest(p["prompt"], _GREEDY_SEED) for p in prompts], greedy, model,
                       desc=f"eval {split}")
        for p, o in zip(prompts, outs):
            row = {name: None for name in artifacts.EVAL.names}
            row.update(iteration=t, split=split, prompt_id=p["prompt_id"], prompt=p["prompt"], answer=p["answer"],
                       response=o.text, num_tokens=o.num_tokens, finish_reason=o.finish_reason)
            if split == VERIFIABLE:
                g = grade(o.text, p["answer"], p["prompt"], p["kind"])
                row.update(extracted=g.extracted, correct=g.correct, grade_rule=g.rule)
            rows.append(row)
    instr = [r for r in rows if r["split"] == INSTRUCTION]
    if instr:
        verdicts = [CompletionRequest(judge_message(r["prompt"], r["response"], j.rubric_template), _GREEDY_SEED)
                    for r in instr]
        fixed = engines.complete(verdicts, rubric, None, desc="eval fixed judge")
        own = fixed if model is None else engines.complete(verdicts, rubric, model, desc="eval self judge")
        for r, f, s in zip(instr, fixed, own):
            quoted = (r["prompt"], r["response"])
            r.update(fixed_judge_text=f.text, fixed_judge_score=parse_score(f.text, f.finish_reason, quoted),
                     self_judge_text=s.text, self_judge_score=parse_score(s.text, s.finish_reason, quoted))
    if instr and baseline is not None:
        _pairwise(engines, cfg, instr, baseline)
    if instr and sets.injections:
        attacks = [sets.injections[k % len(sets.injections)] for k in range(len(instr))]
        verdicts = [CompletionRequest(judge_message(r["prompt"], r["response"] + text, j.rubric_template), _GREEDY_SEED)
                    for r, (_, text) in zip(instr, attacks)]
        outs = engines.complete(verdicts, rubric, None, desc="eval judge injections")
        for r, (aid, text), o in zip(instr, attacks, outs):
            r.update(injection_id=aid, injected_judge_text=o.text,
                     injected_judge_score=parse_score(o.text, o.finish_reason, (r["prompt"], r["response"] + text)))
    return pa.Table.from_pylist(rows, schema=artifacts.EVAL)


def _pairwise(engines: Engines, cfg: RunConfig, instr: list[dict[str, Any]], baseline: pa.Table) -> None:
    base = {r["prompt_id"]: r["response"] for r in baseline.to_pylist() if r["split"] == INSTRUCTION}
    judged = []
    for r in instr:
        r["baseline_response"] = base.get(r["prompt_id"])
        if r["baseline_response"] is None:
            continue  # not in M0's evaluation: nothing to compare with
        if r["baseline_response"] == r["response"]:
            r["outcome"] = "tie"
        else:
            judged.append(r)
    messages = [pairwise_message(r["prompt"], a, b, cfg.judge.pairwise_template)
                for r in judged for a, b in ((r["response"], r["baseline_response"]), (r["baseline_response"], r["response"]))]
    if cfg.eval.pairwise_verdict == "probability":
        probs = engines.choose([winner_choice(m) for m in messages], None, desc="eval win rate")
        for k, r in enumerate(judged):
            first_a, second_a = probs[2 * k][0], probs[2 * k + 1][0]
            preference = (first_a + (1 - second_a)) / 2  # P(M(t) preferred), averaged over the two orders
            r.update(pairwise_first_pa=first_a, pairwise_second_pa=second_a, pairwise_preference=preference,
                     pairwise_first=_letter(first_a), pairwise_second=_letter(second_a),
                     outcome="win" if preference > 0.5 + TIE_BAND else "loss" if preference < 0.5 - TIE_BAND else "tie")
        return
    j = cfg.judge
    shape = SamplingSpec(0.0, 1.0, j.max_tokens, constrained_pairwise_regex(j.max_tokens) if j.constrained else None)
    outs = engines.complete([CompletionRequest(m, _GREEDY_SEED) for m in messages], shape, None, desc="eval win rate")
    for k, r in enumerate(judged):
        first, second = outs[2 * k], outs[2 * k + 1]
        quoted = (r["prompt"], r["response"], r["baseline_response"])
        r.update(pairwise_first_text=first.text, pairwise_first=parse_winner(first.text, first.finish_reason, quoted),
                 pairwise_second_text=second.text,
                 pairwise_second=parse_winner(second.text, second.finish_reason, quoted))
        r["outcome"] = outcome(r["pairwise_first"], r["pairwise_second"])


def _letter(p_a: float) -> str:
    """The position a probability verdict names: "A", "B", or "tie" at exactly one half."""
    return "A" if p_a > 0.5 else "B" if p_a < 0.5 else "tie"


def _fooled(ins: list[dict[str, Any]]) -> dict[str, Any]:
    """How often an appended injection raised the fixed judge's score of a response, over every injected verdict.

    A score where the clean verdict had none (None -> score) counts as raised: the injection made the response
    scorable at all. An injection that leaves no score (the judge echoed it) raised nothing.
    """
    judged = [r for r in ins if r["injection_id"] is not None]
    fooled = sum(r["injected_judge_score"] is not None
                 and (r["fixed_judge_score"] is None or r["injected_judge_score"] > r["fixed_judge_score"]) for r in judged)
    return {"judge_fooled_rate": stats.proportion(fooled, len(judged), "no injection verdict to compare").to_json()}


def position_bias(ins: list[dict[str, Any]]) -> dict[str, Any]:
    """The pairwise judge's position consistency and first-position rate, and whether it can measure a win rate.

    Over the prompts judged in both orders (identical responses are not
    judged). ``degenerate``: None when it can measure one, else why not.
    """
    judged = [r for r in ins if r["pairwise_first"] is not None and r["pairwise_second"] is not None]
    verdicts = [v for r in judged for v in (r["pairwise_first"], r["pairwise_second"]) if v in ("A", "B")]
    same = sum((r["pairwise_first"], r["pairwise_second"]) in (("A", "B"), ("B", "A"), ("tie", "tie")) for r in judged)
    consistency = stats.proportion(same, len(judged), "no prompt was judged in both orders")
    first = stats.proportion(sum(v == "A" for v in verdicts), len(verdicts), "no verdict named a position")
    degenerate = None
    if first.value is not None and max(first.value, 1 - first.value) >= DEGENERATE_POSITION_RATE:
        side = "first" if first.value >= 0.5 else "second"
        share = first.value if side == "first" else 1 - first.value
        degenerate = f"the judge names the {side} position in {share:.0%} of {first.n} verdicts"
    elif consistency.value is not None and consistency.value < MIN_POSITION_CONSISTENCY:
        degenerate = f"the judge's two orders agree on only {consistency.value:.0%} of {consistency.n} prompts"
    return {"pairwise_position_consistency": consistency.to_json(), "pairwise_first_position_rate": first.to_json(),
            "pairwise_degenerate": degenerate}


def distinct2(text: str) -> float | None:
    """Distinct word bigrams over word bigrams of one answer: 1.0 when none repeats, near 0 for a loop (None under
    two words)."""
    words = text.split()
    bigrams = list(zip(words, words[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else None


def answer_shape(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How a model's evaluation answers look, each number with its n and 95% interval (one answer per prompt, so
    the bootstrap is over prompts): mean tokens, the share cut at ``eval.max_tokens``, mean distinct-2."""
    return {
        "eval_answer_tokens": stats.mean([r["num_tokens"] for r in rows], why_empty="no answer").to_json(),
        "eval_truncated_rate": stats.proportion(sum(r["finish_reason"] == "length" for r in rows), len(rows),
                                                "no answer").to_json(),
        "eval_distinct2": stats.mean([d for r in rows if (d := distinct2(r["response"] or "")) is not None],
                                     why_empty="no answer of two words or more").to_json(),
    }


def _judge_mean(ins: list[dict[str, Any]], column: str) -> dict[str, Any] | None:
    return stats.mean([r[column] for r in ins], why_empty="no parsed verdict").to_json() if ins else None


def eval_summary(table: pa.Table, baseline: pa.Table | None = None) -> dict[str, Any]:
    """The evaluation numbers of one EVAL table, each rate and mean with its n and 95% interval.

    ``baseline``: M0's EVAL table, for the paired accuracy difference (None for M0 itself).
    """
    rows = table.to_pylist()
    ver = [r for r in rows if r["split"] == VERIFIABLE]
    ins = [r for r in rows if r["split"] == INSTRUCTION]
    counts = Counter(r["outcome"] for r in ins if r["outcome"] is not None)
    decided = counts["win"] + counts["loss"] + counts["tie"]
    bias = position_bias(ins)
    rates = {}
    for name in ("win", "tie", "loss"):
        if not ins or baseline is None:
            rates[f"{name}_rate"] = None
        elif bias["pairwise_degenerate"]:
            why = f"cannot be measured with this judge: {bias['pairwise_degenerate']}"
            rates[f"{name}_rate"] = stats.unmeasured(decided, why).to_json()
        else:
            rates[f"{name}_rate"] = stats.proportion(counts[name], decided, "no decided comparison").to_json()
    verdicts = [r[k] for r in ins for k in ("fixed_judge_score", "self_judge_score")]
    out = {
        "eval_verifiable": len(ver),
        "eval_accuracy": stats.proportion(sum(bool(r["correct"]) for r in ver), len(ver)).to_json() if ver else None,
        "eval_accuracy_vs_m0": None,
        "eval_grade_rules": dict(sorted(Counter(r["grade_rule"] for r in ver).items())),
        "eval_instructions": len(ins),
        "eval_fixed_judge": _judge_mean(ins, "fixed_judge_score"),
        "eval_self_judge": _judge_mean(ins, "self_judge_score"),
        "eval_judge_parse_rate": stats.proportion(sum(v is not None for v in verdicts), len(verdicts)).to_json() if ins else None,
        "eval_response_tokens": sum(r["num_tokens"] for r in rows),
        **(answer_shape(rows) if rows else {}),
        **(_fooled(ins) if ins else {"judge_fooled_rate": None}),
        "win_counts": {k: counts[k] for k in OUTCOMES},
        **rates,
        **(bias if ins and baseline is not None else {}),
    }
    if ver and baseline is not None:
        m0 = {r["prompt_id"]: float(bool(r["correct"])) for r in baseline.to_pylist() if r["split"] == VERIFIABLE}
        now = {r["prompt_id"]: float(bool(r["correct"])) for r in ver}
        out["eval_accuracy_vs_m0"] = stats.paired_difference(now, m0).to_json()
    return out
