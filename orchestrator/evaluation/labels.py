"""Per-iteration numbers about the labels themselves: are the self-rewards trustworthy?

Label precision is measured where the truth is known: prompts with a
reference answer. A pair is *decided* when the grader finds exactly one of
its two responses correct (an ungradable response decides nothing); its
label is right when the chosen one is. Precision = right / decided, with its
95% interval by a bootstrap over the prompts the decided pairs came from
(pairs of one prompt share responses), for all candidates, kept vs dropped
pairs and each filter's passed vs failed pairs. A filter is said to help
only when its lift over a random drop of the same size from the same
candidates (``stats.compare``) has an interval over prompts above 0.
``labellers`` puts every labeller, controls included, on the same decided
pairs; ``error_ranking`` asks how well each uncertainty signal ranks the
labels' errors.

Calibration of every internal signal: how well it separates correct from
incorrect responses (AUROC over the responses with a gradable answer,
pooled and within prompts; the 95% interval bootstraps prompts), for the
judge's sampled mean, expected score and previous judge where the run has
them, the policy's likelihood, and the controls any signal must beat: the
response's length and whether it stopped (rather than being cut off).
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


def _counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pairs, decided pairs, right labels and the prompts the decided pairs came from."""
    decided = [(r["prompt_id"], t) for r in rows if (t := _pair_truth(r)) is not None]
    return {"pairs": len(rows), "decided": len(decided), "right": sum(t for _, t in decided),
            "prompts": len({p for p, _ in decided})}


def _precision(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``_counts`` and the precision with its interval over those prompts."""
    decided = [(r["prompt_id"], t) for r in rows if (t := _pair_truth(r)) is not None]
    return {**_counts(rows), "precision": stats.proportion_over_clusters(decided, 0, "no decided pair").to_json()}


def _against_chance(pool: list[dict[str, Any]], kept: list[bool], seed: int) -> dict[str, Any]:
    """The precision of the ``kept`` members of ``pool`` against random subsets of ``pool`` of their size, the lift
    and the verdict between them, with inference over prompts (``stats.compare``, which measures the precision
    too)."""
    c = stats.compare([(r["prompt_id"], _pair_truth(r), k) for r, k in zip(pool, kept)], seed)
    return {**_counts([r for r, k in zip(pool, kept) if k]), "precision": c.precision.to_json(),
            "random_drop": c.random_drop_json(), "lift": c.lift.to_json(), "verdict": c.verdict}


def _filters(pairs: pa.Table) -> list[str]:
    return [name[len("pass_"):] for name in pairs.schema.names if name.startswith("pass_")]


def _candidates(pairs: pa.Table) -> list[dict[str, Any]]:
    """Pairs not dropped for a structural reason (too few scores, tie, margin, cap): those a filter could judge."""
    filters = _filters(pairs)
    return [r for r in pairs.to_pylist() if r["drop_reason"] is None or r["drop_reason"] in filters]


def label_quality(pairs: pa.Table) -> dict[str, Any]:
    """Label precision of all candidate pairs, kept and dropped ones (kept against a random drop), and per filter.

    Candidates are pairs not dropped for a structural reason (too few
    scores, tie, margin, cap): those a filter could judge. Per filter, the
    candidates it applied to are split into passed and failed, and the passed
    ones are compared with a random drop of the same size from those.
    """
    filters = _filters(pairs)
    structural_ok = _candidates(pairs)
    out: dict[str, Any] = {
        "candidates": _precision(structural_ok),
        "kept": _against_chance(structural_ok, [r["kept"] for r in structural_ok], seed=0),
        "dropped": _precision([r for r in structural_ok if not r["kept"]]),
        "by_filter": {},
    }
    for k, f in enumerate(filters, start=1):
        col = f"pass_{f}"
        applied = [r for r in structural_ok if r[col] is not None]
        out["by_filter"][f] = {
            "passed": _against_chance(applied, [bool(r[col]) for r in applied], seed=k),
            "failed": _precision([r for r in applied if not r[col]]),
            "not_applicable": len(structural_ok) - len(applied),
        }
    return out


def _token_counts(generations: pa.Table) -> dict[tuple[str, int], int]:
    """Each response's length in tokens, by (prompt_id, sample_idx)."""
    return {(g["prompt_id"], g["sample_idx"]): g["num_tokens"]
            for g in generations.select(["prompt_id", "sample_idx", "num_tokens"]).to_pylist()}


LABELLERS = ("pair's label", "likelihood", "implicit reward", "longer response", "stopped response")


def labellers(pairs: pa.Table, generations: pa.Table) -> dict[str, Any]:
    """Every labeller's precision on the same decided candidate pairs: the pair's own label (the judge's, or
    whatever ranked the pair), the policy's per-token likelihood, the implicit reward, and two controls any
    internal signal must beat: "the longer response is better" and "the response that stopped beats the one cut
    off at max_tokens".

    A labeller abstains where it cannot tell the two apart (an equal
    length, both stopped, its margin 0 or undefined). Per labeller:
    ``labelled`` of the ``decided`` candidate pairs, its precision on them
    and the pair's own label's precision on the very same pairs (both over
    prompts), so every row compares like with like.
    """
    rows = _candidates(pairs)
    tokens = _token_counts(generations)

    def sign(x: float | None) -> int:
        return 0 if x is None or x == 0 else (1 if x > 0 else -1)

    def stopped(r: dict[str, Any]) -> int:
        c, j = r["chosen_finish_reason"] == "stop", r["rejected_finish_reason"] == "stop"
        return 0 if c == j else (1 if c else -1)

    votes = {
        "pair's label": lambda r: 1,
        "likelihood": lambda r: sign(r["likelihood_margin"]),
        "implicit reward": lambda r: sign(r["implicit_margin"]),
        "longer response": lambda r: sign(tokens.get((r["prompt_id"], r["chosen_idx"]), 0)
                                           - tokens.get((r["prompt_id"], r["rejected_idx"]), 0)),
        "stopped response": stopped,
    }
    decided = [(r, t) for r in rows if (t := _pair_truth(r)) is not None]
    out: dict[str, Any] = {}
    for k, name in enumerate(LABELLERS):
        said = [(r["prompt_id"], v, t) for r, t in decided if (v := votes[name](r)) != 0]
        out[name] = {
            "labelled": len(said), "decided": len(decided),
            "precision": stats.proportion_over_clusters([(p, (v > 0) == t) for p, v, t in said], k,
                                                        "no decided pair it labels").to_json(),
            "pair_label_same_pairs": stats.proportion_over_clusters([(p, t) for p, _, t in said], k,
                                                                    "no decided pair it labels").to_json(),
        }
    return out


# Per candidate pair, how sure a signal is of the pair's label (higher: surer), and the controls such a signal must
# beat: a pair of longer responses (per-token noise shrinks with length), a chosen response longer than the rejected.
CERTAINTY_SIGNALS = ("MC-dropout certainty", "judge-sample certainty", "consistency", "likelihood margin",
                     "pair length (control)", "chosen longer (control)")


def error_ranking(pairs: pa.Table, generations: pa.Table) -> dict[str, Any]:
    """How well each uncertainty signal ranks the labels' errors: per signal, the AUROC of its certainty at
    separating the decided candidate pairs whose label is right from those whose label is wrong (0.5: chance),
    pooled and within prompts, beside the length controls.

    Certainty: minus the MC-dropout uncertainty, ``p_correct`` (the judge's
    held-out samples), the prompt's consistency C (one value per prompt: it
    can rank only across prompts), the likelihood's margin for the chosen
    response; controls: the pair's mean length in tokens, and the chosen
    response's length minus the rejected's. None for a signal the pairs do
    not carry.
    """
    tokens = _token_counts(generations)
    decided = [(r, t) for r in _candidates(pairs) if (t := _pair_truth(r)) is not None]

    def length(r: dict[str, Any], idx: str) -> float:
        return float(tokens.get((r["prompt_id"], r[idx]), 0))

    certainty = {
        "MC-dropout certainty": lambda r: None if r["uncertainty"] is None else -r["uncertainty"],
        "judge-sample certainty": lambda r: r["p_correct"],
        "consistency": lambda r: r["consistency"],
        "likelihood margin": lambda r: r["likelihood_margin"],
        "pair length (control)": lambda r: (length(r, "chosen_idx") + length(r, "rejected_idx")) / 2,
        "chosen longer (control)": lambda r: length(r, "chosen_idx") - length(r, "rejected_idx"),
    }
    out: dict[str, Any] = {}
    for k, name in enumerate(CERTAINTY_SIGNALS):
        scores = [certainty[name](r) for r, _ in decided]
        if decided and all(v is None for v in scores):
            out[name] = None  # the pairs do not carry this signal
            continue
        labels, prompts = [t for _, t in decided], [r["prompt_id"] for r, _ in decided]
        out[name] = {"pooled": stats.auroc(scores, labels, prompts, seed=k).to_json(),
                     "within": stats.auroc(scores, labels, prompts, seed=k, within=True).to_json()}
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


# What separates correct from incorrect responses: (metrics key, rewards column). The last two are controls that
# any internal signal must beat to be worth reading: the response's length in tokens, and whether it stopped on its
# own (1) rather than being cut off at max_tokens (0).
CALIBRATION_SIGNALS = (("judge_auroc", "judge_mean"), ("judge_auroc_expected", "judge_expected"),
                       ("judge_auroc_previous", "judge_mean_prev"), ("likelihood_auroc", "logp_policy_norm"),
                       ("length_auroc", "num_tokens"), ("stopped_auroc", "stopped"))


def judge_calibration(rewards: pa.Table, generations: pa.Table | None = None) -> dict[str, Any]:
    """AUROC of each judge signal, of the policy's per-token likelihood and of the controls (length, stopped) at
    separating correct from incorrect responses, pooled and within prompts (``<key>_within``); None where the run
    lacks the signal.

    Responses without a reference answer or with an ungradable one are left
    out: the truth of the first is unknown, and the second has no answer to
    be right or wrong about. ``generations``: where the finish reasons come
    from (without it, no ``stopped_auroc``).
    """
    cols = ["prompt_id", "sample_idx", "correct", "grade_rule", *{c for _, c in CALIBRATION_SIGNALS} - {"stopped"}]
    stopped = {} if generations is None else {
        (g["prompt_id"], g["sample_idx"]): float(g["finish_reason"] == "stop")
        for g in generations.select(["prompt_id", "sample_idx", "finish_reason"]).to_pylist()}
    rows = [r | {"stopped": stopped.get((r["prompt_id"], r["sample_idx"]))} for r in rewards.select(cols).to_pylist()
            if r["correct"] is not None and r["grade_rule"] != UNGRADABLE]
    out: dict[str, Any] = {}
    for key, col in CALIBRATION_SIGNALS:
        collected = bool(stopped) if col == "stopped" else rewards[col].null_count < rewards.num_rows
        if rewards.num_rows and not collected and key != "judge_auroc":
            out[key] = out[f"{key}_within"] = None  # the run does not collect this signal (at this iteration)
            continue
        scores, labels, prompts = [r[col] for r in rows], [r["correct"] for r in rows], [r["prompt_id"] for r in rows]
        out[key] = stats.auroc(scores, labels, prompts).to_json()
        out[f"{key}_within"] = stats.auroc(scores, labels, prompts, within=True).to_json()
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
