"""Per-iteration numbers about the labels themselves: are the self-rewards trustworthy?

Label precision is measured where the truth is known: prompts with a
reference answer. A pair is *decided* when exactly one of its two responses
is correct; its label is right when the chosen one is. Precision = right /
decided, reported for kept vs dropped pairs and for each filter's passed vs
failed pairs. A filter helps when its passed precision beats its failed one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pyarrow as pa


def _precision(rows: list[dict[str, Any]]) -> dict[str, Any]:
    decided = [r for r in rows if r["chosen_correct"] is not None and r["rejected_correct"] is not None
               and r["chosen_correct"] != r["rejected_correct"]]
    right = sum(1 for r in decided if r["chosen_correct"])
    return {"pairs": len(rows), "decided": len(decided), "right": right,
            "precision": right / len(decided) if decided else None}


def label_quality(pairs: pa.Table) -> dict[str, Any]:
    """Label precision of all candidate pairs, kept and dropped ones, and per filter (passed / failed).

    Candidates are pairs not dropped for a structural reason (too few
    scores, tie, margin, cap): those a filter could judge.
    """
    rows = pairs.to_pylist()
    filters = [name[len("pass_"):] for name in pairs.schema.names if name.startswith("pass_")]
    structural_ok = [r for r in rows if r["drop_reason"] is None or r["drop_reason"] in filters]
    out: dict[str, Any] = {
        "candidates": _precision(structural_ok),
        "kept": _precision([r for r in structural_ok if r["kept"]]),
        "dropped": _precision([r for r in structural_ok if not r["kept"]]),
        "by_filter": {},
    }
    for f in filters:
        col = f"pass_{f}"
        out["by_filter"][f] = {
            "passed": _precision([r for r in structural_ok if r[col] is True]),
            "failed": _precision([r for r in structural_ok if r[col] is False]),
            "not_applicable": sum(1 for r in structural_ok if r[col] is None),
        }
    return out


def consistency_summary(pairs: pa.Table) -> dict[str, Any]:
    """Mean consistency C over prompts where it is defined (None, with the count 0, where it never is)."""
    per_prompt = {r["prompt_id"]: r["consistency"] for r in pairs.select(["prompt_id", "consistency"]).to_pylist()}
    defined = [c for c in per_prompt.values() if c is not None]
    return {"mean_consistency": sum(defined) / len(defined) if defined else None,
            "consistency_prompts": len(defined)}


def agreement_rate(pairs: pa.Table) -> dict[str, Any]:
    """Share of candidate pairs where the implicit reward prefers the judge's chosen response too."""
    rows = [r for r in pairs.select(["implicit_margin", "margin"]).to_pylist()
            if r["implicit_margin"] is not None and r["margin"] is not None and r["margin"] > 0]
    agree = sum(1 for r in rows if r["implicit_margin"] > 0)
    return {"agreement_rate": agree / len(rows) if rows else None, "agreement_pairs": len(rows)}


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
    excluded). None when the judgments carry no expected scores.
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
        "pair_order_agreement": same / total if total else None,
        "pairs_compared": total,
    }
