"""Pair building: one candidate pair per prompt, highest vs lowest mean judge score.

Every prompt yields exactly one row in pairs.parquet, kept or dropped with a
reason, so a run can account for every prompt.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from orchestrator.artifacts import PAIRS

DROP_FEW_VALID = "fewer_than_2_valid_scores"
DROP_TIE = "tie"


def p_chosen_beats_rejected(chosen: list[float], rejected: list[float]) -> float | None:
    """Empirical P(chosen's score > rejected's score) over all pairs of judge samples, ties counting 1/2.

    This is the Mann-Whitney estimate of the probability that a fresh judge
    sample of the chosen response outscores one of the rejected response;
    None when either side has no valid sample.
    """
    if not chosen or not rejected:
        return None
    wins = sum((c > r) + 0.5 * (c == r) for c in chosen for r in rejected)
    return wins / (len(chosen) * len(rejected))


def build_pairs(generations: pa.Table, rewards: pa.Table, judgments: pa.Table) -> pa.Table:
    """Best-vs-worst pairs by ``judge_mean``; one row per prompt in ``generations``.

    The chosen response is the highest mean (lowest sample_idx among equals),
    the rejected one the lowest mean (highest sample_idx among equals).
    Prompts with fewer than two validly judged responses, or whose best and
    worst means are equal, become dropped rows.
    """
    gen = {(r["prompt_id"], r["sample_idx"]): r for r in generations.to_pylist()}
    prompts: dict[str, str] = {}
    for (pid, _), r in gen.items():
        prompts.setdefault(pid, r["prompt"])
    by_prompt: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rewards.to_pylist():
        if r["judge_mean"] is not None:
            by_prompt[r["prompt_id"]].append((r["sample_idx"], r["judge_mean"]))
    samples: dict[tuple[str, int], list[float]] = defaultdict(list)
    for j in judgments.to_pylist():
        if j["judge_model"] == "current" and j["score"] is not None:
            samples[(j["prompt_id"], j["sample_idx"])].append(j["score"])

    rows = []
    for pid in sorted(prompts):
        scored = sorted(by_prompt.get(pid, []))
        row = {"prompt_id": pid, "prompt": prompts[pid], "chosen": None, "rejected": None,
               "chosen_idx": None, "rejected_idx": None, "margin": None, "consistency": None,
               "p_correct": None, "weight": 0.0, "kept": False, "drop_reason": None,
               "chosen_finish_reason": None, "rejected_finish_reason": None}
        if len(scored) < 2:
            row["drop_reason"] = DROP_FEW_VALID
            rows.append(row)
            continue
        best = max(scored, key=lambda s: (s[1], -s[0]))
        worst = min(scored, key=lambda s: (s[1], -s[0]))
        if best[1] == worst[1]:
            # All equal: record the first two so the tie is auditable.
            best, worst = scored[0], scored[1]
        c, r = gen[(pid, best[0])], gen[(pid, worst[0])]
        margin = best[1] - worst[1]
        row.update(
            chosen=c["response"], rejected=r["response"], chosen_idx=best[0], rejected_idx=worst[0],
            margin=margin, p_correct=p_chosen_beats_rejected(samples[(pid, best[0])], samples[(pid, worst[0])]),
            chosen_finish_reason=c["finish_reason"], rejected_finish_reason=r["finish_reason"],
        )
        if margin == 0:
            row["drop_reason"] = DROP_TIE
        else:
            row.update(kept=True, weight=1.0)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=PAIRS)
