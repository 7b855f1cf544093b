"""Per-iteration numbers about the labels themselves: are the self-rewards trustworthy?

Label precision is measured where the truth is known: prompts with a
reference answer. A pair is *decided* when the grader finds exactly one of
its two responses correct (an ungradable response decides nothing); its
label is right when the chosen one is. Precision = right / decided, with its
Wilson 95% interval, for all candidates, kept vs dropped pairs and each
filter's passed vs failed pairs. A filter is said to help only when the
precision of the pairs it kept lies above what a random drop of the same
size from the same candidates gives (``stats.random_drop``), beyond that
baseline's 95% range.

Judge calibration: how well the judge's score of a response separates
correct from incorrect responses (AUROC over the responses with a gradable
answer; the 95% interval bootstraps prompts), for the sampled mean score,
the expected score and the previous judge where the run has them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pyarrow as pa

from orchestrator.evaluation import stats
from orchestrator.evaluation.answers import UNGRADABLE


def _pair_truth(r: dict[str, Any]) -> bool | None:
    """The pair's truth: True when chosen is the correct one, False when rejected is, None when undecided."""
    c, j = r["chosen_correct"], r["rejected_correct"]
    return None if c is None or j is None or c == j else bool(c)


def _precision(rows: list[dict[str, Any]]) -> dict[str, Any]:
    truths = [_pair_truth(r) for r in rows]
    decided = [t for t in truths if t is not None]
    right = sum(decided)
    return {"pairs": len(rows), "decided": len(decided), "right": right,
            "precision": stats.proportion(right, len(decided), "no decided pair").to_json()}


def _against_chance(subset: list[dict[str, Any]], pool: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """The precision of ``subset`` and of random subsets of ``pool`` of its size, and the verdict between them."""
    out = _precision(subset)
    observed = stats.Estimate.from_json(out["precision"])
    baseline = stats.random_drop([_pair_truth(r) for r in pool], len(subset), observed.value, seed)
    return {**out, "random_drop": baseline.to_json(), "verdict": stats.verdict(observed, baseline)}


def label_quality(pairs: pa.Table) -> dict[str, Any]:
    """Label precision of all candidate pairs, kept and dropped ones (kept against a random drop), and per filter.

    Candidates are pairs not dropped for a structural reason (too few
    scores, tie, margin, cap): those a filter could judge. Per filter, the
    candidates it applied to are split into passed and failed, and the passed
    ones are compared with a random drop of the same size from those.
    """
    rows = pairs.to_pylist()
    filters = [name[len("pass_"):] for name in pairs.schema.names if name.startswith("pass_")]
    structural_ok = [r for r in rows if r["drop_reason"] is None or r["drop_reason"] in filters]
    out: dict[str, Any] = {
        "candidates": _precision(structural_ok),
        "kept": _against_chance([r for r in structural_ok if r["kept"]], structural_ok, seed=0),
        "dropped": _precision([r for r in structural_ok if not r["kept"]]),
        "by_filter": {},
    }
    for k, f in enumerate(filters, start=1):
        col = f"pass_{f}"
        applied = [r for r in structural_ok if r[col] is not None]
        out["by_filter"][f] = {
            "passed": _against_chance([r for r in applied if r[col]], applied, seed=k),
            "failed": _precision([r for r in applied if not r[col]]),
            "not_applicable": len(structural_ok) - len(applied),
        }
    return out


def consistency_summary(pairs: pa.Table, why_undefined: str = "undefined on every prompt") -> dict[str, Any]:
    """Mean consistency C over the prompts where it is defined (bootstrap interval), and how many prompts had none.

    ``why_undefined``: what the summary says when C is defined on no prompt.
    """
    per_prompt = {r["prompt_id"]: r["consistency"] for r in pairs.select(["prompt_id", "consistency"]).to_pylist()}
    defined = [c for c in per_prompt.values() if c is not None]
    return {"mean_consistency": stats.mean(defined, why_empty=why_undefined).to_json() if per_prompt else None,
            "consistency_prompts": len(defined), "consistency_undefined_prompts": len(per_prompt) - len(defined)}


def agreement_rate(pairs: pa.Table) -> dict[str, Any]:
    """Share of candidate pairs where a second internal reward prefers the judge's chosen response too (Wilson).

    ``agreement_rate``: the implicit reward; ``likelihood_agreement_rate``: the
    policy's per-token log-likelihood (defined from iteration 1).
    """
    out = {}
    for key, column, why in (("agreement_rate", "implicit_margin",
                              "the implicit reward is undefined while the policy is the reference"),
                             ("likelihood_agreement_rate", "likelihood_margin", "no likelihood margin")):
        rows = [r for r in pairs.select([column, "margin"]).to_pylist()
                if r[column] is not None and r["margin"] is not None and r["margin"] > 0]
        out[key] = stats.proportion(sum(1 for r in rows if r[column] > 0), len(rows), why).to_json()
    return out


def judge_calibration(rewards: pa.Table) -> dict[str, Any]:
    """AUROC of each judge signal, and of the policy's per-token likelihood, at separating correct from incorrect
    responses (None where the run lacks the signal).

    Responses without a reference answer or with an ungradable one are left
    out: the truth of the first is unknown, and the second has no answer to
    be right or wrong about.
    """
    cols = ["prompt_id", "correct", "grade_rule", "judge_mean", "judge_expected", "judge_mean_prev", "logp_policy_norm"]
    rows = [r for r in rewards.select(cols).to_pylist() if r["correct"] is not None and r["grade_rule"] != UNGRADABLE]
    out = {}
    for key, col in (("judge_auroc", "judge_mean"), ("judge_auroc_expected", "judge_expected"),
                     ("judge_auroc_previous", "judge_mean_prev"), ("likelihood_auroc", "logp_policy_norm")):
        if rewards.num_rows and rewards[col].null_count == rewards.num_rows and key != "judge_auroc":
            out[key] = None  # the run does not collect this signal (at this iteration)
            continue
        out[key] = stats.auroc([r[col] for r in rows], [r["correct"] for r in rows], [r["prompt_id"] for r in rows]).to_json()
    all_scores = rewards["judge_mean"].to_pylist()
    out["judge_score_mean"] = stats.mean(all_scores, why_empty="no parsed verdict").to_json()
    out["graded_responses"] = len(rows)
    return out


def _pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 2:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy)


def judge_agreement(judgments: pa.Table) -> dict[str, Any] | None:
    """How well the one-pass expected score agrees with the mean of the K sampled verdicts, per response.

    The one-pass estimate is the expected score of verdict 0 alone; the
    sampled estimate is the mean parsed score of all K verdicts. Reports
    their Pearson correlation, mean absolute difference, and the share of
    within-prompt response pairs both order the same way (ties in either
    excluded; Wilson interval). None when the judgments carry no expected scores.
    """
    cur = [r for r in judgments.select(["prompt_id", "sample_idx", "judge_model", "judge_idx", "score", "score_expected"]).to_pylist()
           if r["judge_model"] == "current"]
    if not any(r["score_expected"] is not None for r in cur):
        return None
    sampled: dict[tuple[str, int], list[float]] = defaultdict(list)
    one_pass: dict[tuple[str, int], float] = {}
    for r in cur:
        key = (r["prompt_id"], r["sample_idx"])
        if r["score"] is not None:
            sampled[key].append(r["score"])
        if r["judge_idx"] == 0 and r["score_expected"] is not None:
            one_pass[key] = r["score_expected"]
    keys = sorted(k for k in one_pass if sampled.get(k))
    s = [sum(sampled[k]) / len(sampled[k]) for k in keys]
    e = [one_pass[k] for k in keys]
    same = total = 0
    for i, a in enumerate(keys):
        for j in range(i + 1, len(keys)):
            if keys[j][0] != a[0] or s[i] == s[j] or e[i] == e[j]:
                continue
            total += 1
            same += (s[i] > s[j]) == (e[i] > e[j])
    return {
        "responses": len(keys),
        "pearson": _pearson(s, e),
        "mean_abs_diff": sum(abs(a - b) for a, b in zip(s, e)) / len(keys) if keys else None,
        "pair_order_agreement": stats.proportion(same, total, "no pair ordered by both").to_json(),
        "pairs_compared": total,
    }
