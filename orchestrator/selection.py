"""The select stage: candidate pairs, the filters that decide which labels to trust, and per-pair weights.

Everything here is a pure function of Arrow tables. A ``PairStrategy`` turns
the scored responses into candidate pairs (structural drops such as ties get
their reason here); ``annotate`` adds what every filter reads (judge
confidence, consistency, implicit-reward margin, MC-dropout uncertainty,
correctness); each ``Filter`` returns a verdict per candidate (True, False, or
None where it does not apply) recorded as a ``pass_<name>`` column; ``select``
combines them: a pair is kept when no active filter fails it, and a dropped
pair's ``drop_reason`` names the first filter (in the configured order) that
failed it. Every candidate lands in pairs.parquet, kept or not, so a run can
be audited pair by pair.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import pyarrow as pa

from orchestrator.answers import UNGRADABLE
from orchestrator.artifacts import PAIRS
from orchestrator.consistency import consistency
from orchestrator.uncertainty import bald, p_chosen_beats_rejected, sigmoid, variance

DROP_FEW_VALID = "fewer_than_2_valid_scores"
DROP_TIE = "tie"
DROP_BELOW_MARGIN = "below_margin"
DROP_OVER_CAP = "over_cap"

Row = dict[str, Any]


# --- candidate pairs ---------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """One response of a prompt with the judge score that ranks it."""

    sample_idx: int
    score: float


class PairStrategy(Protocol):
    def pairs(self, scored: list[Scored]) -> list[tuple[Scored, Scored, str | None]]:
        """(chosen, rejected, structural drop reason or None) for one prompt's validly scored responses (>= 2)."""
        ...


@dataclass(frozen=True)
class BestVsWorst:
    """One pair per prompt: highest vs lowest score (lowest / highest sample_idx among equals); equal = tie."""

    def pairs(self, scored: list[Scored]) -> list[tuple[Scored, Scored, str | None]]:
        best = max(scored, key=lambda s: (s.score, -s.sample_idx))
        worst = min(scored, key=lambda s: (s.score, -s.sample_idx))
        if best.score == worst.score:
            # All equal: record the first two so the tie is auditable.
            ordered = sorted(scored, key=lambda s: s.sample_idx)
            return [(ordered[0], ordered[1], DROP_TIE)]
        return [(best, worst, None)]


@dataclass(frozen=True)
class MarginPairs:
    """Every pair of responses, oriented by score; margin >= ``min_margin`` qualifies, largest first, ``cap`` per prompt."""

    min_margin: float
    cap: int

    def pairs(self, scored: list[Scored]) -> list[tuple[Scored, Scored, str | None]]:
        out = []
        for i, a in enumerate(scored):
            for b in scored[i + 1 :]:
                hi, lo = (a, b) if (a.score, -a.sample_idx) >= (b.score, -b.sample_idx) else (b, a)
                out.append((hi, lo))
        out.sort(key=lambda p: (-(p[0].score - p[1].score), p[0].sample_idx, p[1].sample_idx))
        result: list[tuple[Scored, Scored, str | None]] = []
        taken = 0
        for hi, lo in out:
            margin = hi.score - lo.score
            if margin == 0:
                reason: str | None = DROP_TIE
            elif margin < self.min_margin:
                reason = DROP_BELOW_MARGIN
            elif taken >= self.cap:
                reason = DROP_OVER_CAP
            else:
                reason, taken = None, taken + 1
            result.append((hi, lo, reason))
        return result


# --- soft labels for the loss --------------------------------------------------


@dataclass(frozen=True)
class SoftLabel:
    """How ``label_p`` (the loss's target probability that chosen wins) is set.

    ``hard``: 1. ``consistency``: the prompt's C (CREAM 'dyn'), 1 where C is
    undefined. ``mean_consistency``: the mean C over candidates (CREAM
    'avg'). ``score_margin``: sigmoid(judge-score margin / temperature), the
    preference strength of the soft-preference loss.
    """

    kind: Literal["hard", "consistency", "mean_consistency", "score_margin"] = "hard"
    temperature: float = 1.0


# --- filters -------------------------------------------------------------------


class Filter(Protocol):
    name: str  # the drop_reason it gives, and its pass_<name> column

    def verdicts(self, candidates: list[Row]) -> list[bool | None]:
        """Per candidate: passes, fails, or None (does not apply)."""
        ...


@dataclass(frozen=True)
class ConsistencyFilter:
    """CREAM 'filter' mode: a pair passes when its prompt's consistency C >= threshold (None when C is undefined)."""

    threshold: float
    name: str = "low_consistency"

    def verdicts(self, candidates: list[Row]) -> list[bool | None]:
        return [None if r["consistency"] is None else r["consistency"] >= self.threshold for r in candidates]


@dataclass(frozen=True)
class AgreementFilter:
    """SCIR-style: the implicit reward must prefer the judge's chosen response (h_implicit > 0).

    With ``confidence``: also P(chosen wins) >= confidence under both
    rewards, the judge's from its samples (``p_correct``) and the implicit
    reward's as sigmoid(h_implicit). None while the implicit reward is undefined.
    """

    confidence: float | None = None
    name: str = "reward_disagreement"

    def verdicts(self, candidates: list[Row]) -> list[bool | None]:
        out: list[bool | None] = []
        for r in candidates:
            h = r["implicit_margin"]
            if h is None:
                out.append(None)
                continue
            ok = h > 0
            if self.confidence is not None:
                ok = ok and r["p_correct"] is not None and r["p_correct"] >= self.confidence
                ok = ok and sigmoid(h) >= self.confidence
            out.append(ok)
        return out


@dataclass(frozen=True)
class JudgeUncertaintyFilter:
    """UPO (a): the judge-sample estimate of P(chosen beats rejected) must reach ``p_min``."""

    p_min: float
    name: str = "judge_uncertain"

    def verdicts(self, candidates: list[Row]) -> list[bool | None]:
        return [None if r["p_correct"] is None else r["p_correct"] >= self.p_min for r in candidates]


@dataclass(frozen=True)
class MCDropoutFilter:
    """UPO (b): the ``fraction`` of candidates with the highest MC-dropout uncertainty fail.

    ``floor(fraction * n)`` pairs fail, n = candidates with an uncertainty;
    ties broken by prompt id and indices so the choice is deterministic.
    Whether failing drops the pair or only down-weights it is ``select``'s
    ``downweight`` argument.
    """

    fraction: float
    name: str = "mc_dropout_uncertain"

    def verdicts(self, candidates: list[Row]) -> list[bool | None]:
        scored = [i for i, r in enumerate(candidates) if r["uncertainty"] is not None]
        scored.sort(key=lambda i: (-candidates[i]["uncertainty"], candidates[i]["prompt_id"],
                                   candidates[i]["chosen_idx"], candidates[i]["rejected_idx"]))
        worst = set(scored[: int(self.fraction * len(scored))])
        return [None if r["uncertainty"] is None else i not in worst for i, r in enumerate(candidates)]


# --- the stage -----------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The select stage's strategy objects, built from the config."""

    strategy: PairStrategy = BestVsWorst()
    filters: tuple[Filter, ...] = ()
    label: SoftLabel = SoftLabel()
    beta: float = 0.1  # scale of the implicit reward margin
    score_column: str = "judge_mean"  # or "judge_expected"
    length_normalized: bool = False
    consistency_source: Literal["judge", "implicit"] = "judge"
    mc_measure: Literal["bald", "variance"] = "bald"
    # Filters listed here down-weight failing pairs by ``downweight`` instead of dropping them.
    downweight_filters: tuple[str, ...] = ()
    downweight: float = 0.5


def _implicit(logp: float | None, ref: float | None, tokens: int, normalized: bool) -> float | None:
    if logp is None or ref is None:
        return None
    return (logp - ref) / max(tokens, 1) if normalized else logp - ref


def _dist_beats(pc: Sequence[float], pr: Sequence[float]) -> float:
    """P(X > Y) + P(X = Y) / 2 for independent score distributions over 0..5."""
    return sum(a * b * (1.0 if i > j else 0.5 if i == j else 0.0) for i, a in enumerate(pc) for j, b in enumerate(pr))


def select(
    generations: pa.Table,
    rewards: pa.Table,
    judgments: pa.Table,
    sel: Selection,
    policy_is_reference: bool,
) -> pa.Table:
    """Candidate pairs of every prompt in ``generations`` with all annotations, verdicts, weights and labels.

    ``policy_is_reference``: the scoring policy is the reference model itself
    (iteration 1), so implicit rewards are undefined there (None), not zero.
    Assumes rewards and judgments are keyed by (prompt_id, sample_idx) of
    ``generations``. Returns a table with the PAIRS schema plus
    ``pass_<filter>`` columns.
    """
    gen = {(r["prompt_id"], r["sample_idx"]): r for r in generations.to_pylist()}
    rew = {(r["prompt_id"], r["sample_idx"]): r for r in rewards.to_pylist()}
    prompts: dict[str, str] = {}
    keys_of: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for key, r in gen.items():
        prompts.setdefault(key[0], r["prompt"])
        keys_of[key[0]].append(key)
    samples: dict[tuple[str, int], list[float]] = defaultdict(list)
    dists: dict[tuple[str, int], list[list[float]]] = defaultdict(list)
    for j in judgments.to_pylist():
        if j["judge_model"] != "current":
            continue
        key = (j["prompt_id"], j["sample_idx"])
        if j["score"] is not None:
            samples[key].append(j["score"])
        if j.get("score_probs") is not None:
            dists[key].append(j["score_probs"])

    def implicit(key: tuple[str, int], logp_col: str) -> float | None:
        r = rew[key]
        if policy_is_reference and logp_col == "logp_policy":
            return None
        return _implicit(r[logp_col], r["logp_ref"], r["num_tokens"], sel.length_normalized)

    def reward_pair(key: tuple[str, int]) -> tuple[float | None, float | None]:
        if sel.consistency_source == "judge":
            return rew[key]["judge_mean"], rew[key]["judge_mean_prev"]
        return implicit(key, "logp_policy"), implicit(key, "logp_prev")

    rows: list[Row] = []
    for pid in sorted(prompts):
        keys = sorted(keys_of[pid])
        cur, prev = zip(*(reward_pair(k) for k in keys)) if keys else ((), ())
        c_prompt = consistency(list(cur), list(prev))
        scored = [Scored(k[1], rew[k][sel.score_column]) for k in keys if rew.get(k, {}).get(sel.score_column) is not None]
        base: Row = {"prompt_id": pid, "prompt": prompts[pid], "consistency": c_prompt}
        if len(scored) < 2:
            rows.append({**base, "drop_reason": DROP_FEW_VALID})
            continue
        for chosen, rejected, reason in sel.strategy.pairs(scored):
            kc, kr = (pid, chosen.sample_idx), (pid, rejected.sample_idx)
            c, r = gen[kc], gen[kr]
            if sel.score_column == "judge_expected":
                p_correct = _mixture_beats(dists[kc], dists[kr])
            else:
                p_correct = p_chosen_beats_rejected(samples[kc], samples[kr])
            ic, ir = implicit(kc, "logp_policy"), implicit(kr, "logp_policy")
            rows.append({
                **base, "chosen": c["response"], "rejected": r["response"],
                "chosen_idx": chosen.sample_idx, "rejected_idx": rejected.sample_idx,
                "margin": chosen.score - rejected.score, "p_correct": p_correct,
                "chosen_finish_reason": c["finish_reason"], "rejected_finish_reason": r["finish_reason"],
                "implicit_margin": None if ic is None or ir is None else sel.beta * (ic - ir),
                "uncertainty": _mc_uncertainty(rew[kc], rew[kr], sel),
                "chosen_correct": _truth(rew[kc]), "rejected_correct": _truth(rew[kr]),
                "drop_reason": reason,
            })
    return _decide(rows, sel)


def _truth(reward: Row) -> bool | None:
    """Whether a response is correct, where the grader could tell (None: no reference answer, or ungradable)."""
    return None if reward.get("grade_rule") == UNGRADABLE else reward.get("correct")


def _mixture_beats(pc: list[list[float]], pr: list[list[float]]) -> float | None:
    if not pc or not pr:
        return None
    mix_c = [sum(d[i] for d in pc) / len(pc) for i in range(len(pc[0]))]
    mix_r = [sum(d[i] for d in pr) / len(pr) for i in range(len(pr[0]))]
    return _dist_beats(mix_c, mix_r)


def _mc_uncertainty(c: Row, r: Row, sel: Selection) -> float | None:
    mc_c, mc_r = c.get("logp_mc"), r.get("logp_mc")
    if not mc_c or not mc_r:
        return None
    margins = [
        sel.beta * (_implicit(a, c["logp_ref"], c["num_tokens"], sel.length_normalized)
                    - _implicit(b, r["logp_ref"], r["num_tokens"], sel.length_normalized))
        for a, b in zip(mc_c, mc_r, strict=True)
    ]
    return bald(margins) if sel.mc_measure == "bald" else variance(margins)


def _decide(rows: list[Row], sel: Selection) -> pa.Table:
    candidates = [r for r in rows if r["drop_reason"] is None]
    verdicts = {f.name: dict(zip(map(id, candidates), f.verdicts(candidates))) for f in sel.filters}
    defined_c = [r["consistency"] for r in candidates if r["consistency"] is not None]
    mean_c = sum(defined_c) / len(defined_c) if defined_c else None
    out = []
    for r in rows:
        row = {name: None for name in PAIRS.names} | {f"pass_{f.name}": None for f in sel.filters}
        row.update({k: v for k, v in r.items() if k in row})
        weight = 0.0
        if r["drop_reason"] is None:
            weight = 1.0
            for f in sel.filters:
                v = verdicts[f.name][id(r)]
                row[f"pass_{f.name}"] = v
                if v is False:
                    if f.name in sel.downweight_filters:
                        weight *= sel.downweight
                    elif row["drop_reason"] is None:
                        row["drop_reason"] = f.name
            if row["drop_reason"] is not None:
                weight = 0.0
        row["kept"] = row["drop_reason"] is None
        row["weight"] = weight
        row["label_p"] = _label(r, sel.label, mean_c) if "margin" in r else None
        out.append(row)
    schema = PAIRS
    for f in sel.filters:
        schema = schema.append(pa.field(f"pass_{f.name}", pa.bool_()))
    return pa.Table.from_pylist(out, schema=schema)


def _label(r: Row, label: SoftLabel, mean_c: float | None) -> float:
    if label.kind == "consistency":
        return 1.0 if r["consistency"] is None else r["consistency"]
    if label.kind == "mean_consistency":
        return 1.0 if mean_c is None else mean_c
    if label.kind == "score_margin":
        return sigmoid(r["margin"] / label.temperature)
    return 1.0
