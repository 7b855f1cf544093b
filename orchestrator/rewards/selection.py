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

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.config import RunConfig
from orchestrator.evaluation.answers import UNGRADABLE
from orchestrator.rewards.consistency import consistency
from orchestrator.rewards.uncertainty import bald, flip, p_chosen_beats_rejected, sigmoid, variance
from orchestrator.run.artifacts import PAIRS
from orchestrator.run.roles import Models

DROP_FEW_VALID = "fewer_than_2_valid_scores"
DROP_TIE = "tie"
DROP_BELOW_MARGIN = "below_margin"
DROP_OVER_CAP = "over_cap"

Row = dict[str, Any]  # a row of the rewards table


# --- candidate pairs ---------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A pair of one prompt's responses, with every signal the filters and labels read (columns of ``PAIRS``).

    ``drop_reason``: a structural reason (a tie, below the margin, over the cap) or None for a pair the filters
    judge.
    """

    prompt_id: str
    prompt: str
    consistency: float | None  # the prompt's C (CREAM), None where undefined
    chosen: str
    rejected: str
    chosen_idx: int
    rejected_idx: int
    margin: float
    p_correct: float | None
    chosen_finish_reason: str
    rejected_finish_reason: str
    implicit_margin: float | None
    likelihood_margin: float | None
    likelihood_change_margin: float | None
    uncertainty: float | None
    chosen_correct: bool | None
    rejected_correct: bool | None
    drop_reason: str | None
    previous_rewards: bool = True  # the prompt's responses have previous rewards (False at iteration 1)


@dataclass(frozen=True)
class Unpaired:
    """A prompt with fewer than two scored responses: a row of ``PAIRS`` with no pair."""

    prompt_id: str
    prompt: str
    consistency: float | None
    drop_reason: str = DROP_FEW_VALID


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

    ``hard``: 1. ``consistency``: the prompt's C (CREAM 'dyn'); where C is
    undefined, the mean C of the iteration's prompts (as CREAM's code does),
    and 1 when no prompt has one. ``mean_consistency``: that mean for every
    pair (CREAM 'avg'). ``score_margin``: sigmoid(judge-score margin /
    temperature), the preference strength of the soft-preference loss.
    """

    kind: Literal["hard", "consistency", "mean_consistency", "score_margin"] = "hard"
    temperature: float = 1.0


# --- filters -------------------------------------------------------------------


class Filter(Protocol):
    name: str  # the drop_reason it gives, and its pass_<name> column

    def verdicts(self, candidates: list[Candidate]) -> list[bool | None]:
        """Per candidate: passes, fails, or None (does not apply)."""
        ...


@dataclass(frozen=True)
class ConsistencyFilter:
    """CREAM 'filter' mode: a pair passes when its prompt's consistency C >= threshold.

    Where C is undefined although the prompt has previous rewards (a
    constant ranking, fewer than two comparable responses), nothing vouches
    for its pairs: they fail (``undefined="drop"``) or pass (``"keep"``).
    Without previous rewards (iteration 1) the filter does not apply (None).
    """

    threshold: float
    undefined: Literal["drop", "keep"] = "drop"
    name: str = "low_consistency"

    def verdicts(self, candidates: list[Candidate]) -> list[bool | None]:
        return [r.consistency >= self.threshold if r.consistency is not None
                else (self.undefined == "keep") if r.previous_rewards else None for r in candidates]


@dataclass(frozen=True)
class AgreementFilter:
    """SCIR-style: a second internal reward must prefer the judge's chosen response too.

    ``signal``: which one, by its margin column: ``implicit`` (the DPO
    implicit reward, ``implicit_margin``; undefined while the policy is the
    reference), ``likelihood`` (the policy's per-token log-likelihood,
    ``likelihood_margin``; defined from iteration 1) or ``likelihood_change``
    (its change since the previous model, ``likelihood_change_margin``).
    With ``confidence``: also P(chosen wins) >= confidence under both rewards,
    the judge's (``p_correct``) and the signal's as sigmoid(margin). None
    where the signal is undefined.
    """

    confidence: float | None = None
    signal: Literal["implicit", "likelihood", "likelihood_change"] = "implicit"
    name: str = "reward_disagreement"

    def verdicts(self, candidates: list[Candidate]) -> list[bool | None]:
        out: list[bool | None] = []
        for r in candidates:
            h = getattr(r, f"{self.signal}_margin")
            if h is None:
                out.append(None)
                continue
            ok = h > 0
            if self.confidence is not None:
                ok = ok and r.p_correct is not None and r.p_correct >= self.confidence
                ok = ok and sigmoid(h) >= self.confidence
            out.append(ok)
        return out


@dataclass(frozen=True)
class JudgeUncertaintyFilter:
    """UPO (a): the judge-sample estimate of P(chosen beats rejected) must reach ``p_min``."""

    p_min: float
    name: str = "judge_uncertain"

    def verdicts(self, candidates: list[Candidate]) -> list[bool | None]:
        return [None if r.p_correct is None else r.p_correct >= self.p_min for r in candidates]


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

    def verdicts(self, candidates: list[Candidate]) -> list[bool | None]:
        scored = [i for i, r in enumerate(candidates) if r.uncertainty is not None]
        scored.sort(key=lambda i: (-candidates[i].uncertainty, candidates[i].prompt_id,
                                   candidates[i].chosen_idx, candidates[i].rejected_idx))
        worst = set(scored[: int(self.fraction * len(scored))])
        return [None if r.uncertainty is None else i not in worst for i, r in enumerate(candidates)]


# --- the stage -----------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The select stage's strategy objects, built from the config."""

    strategy: PairStrategy = BestVsWorst()
    filters: tuple[Filter, ...] = ()
    label: SoftLabel = SoftLabel()
    beta: float = 0.1  # scale of the implicit reward margin
    judge_signal: Literal["sampled", "expected"] = "sampled"  # the judge number: parsed verdicts, or expected scores
    rank_by: Literal["judge", "likelihood", "random"] = "judge"  # what ranks a prompt's responses into pairs
    seed: int = 0  # of rank_by "random"
    # Rank on the even-numbered verdicts and estimate p_correct on the odd ones, so the estimate is not biased by
    # the selection it judges (see ``_verdict_split``).
    holdout_verdicts: bool = False
    length_normalized: bool = False  # implicit rewards per response token
    consistency_source: Literal["judge", "implicit", "likelihood"] = "judge"
    mc_measure: Literal["flip", "bald", "variance"] = "flip"
    # Filters listed here down-weight failing pairs by ``downweight`` instead of dropping them.
    downweight_filters: tuple[str, ...] = ()
    downweight: float = 0.5


def _implicit(logp: float | None, ref: float | None, tokens: int, normalized: bool) -> float | None:
    if logp is None or ref is None:
        return None
    return (logp - ref) / max(tokens, 1) if normalized else logp - ref


def _dist_beats(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """P(X > Y) + P(X = Y) / 2 for independent score distributions over 0..5."""
    return sum(a * b * (1.0 if i > j else 0.5 if i == j else 0.0)
               for i, a in enumerate(chosen) for j, b in enumerate(rejected))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _difference(a: float | None, b: float | None, scale: float = 1.0) -> float | None:
    return None if a is None or b is None else scale * (a - b)


@dataclass
class _Verdicts:
    """One response's current-judge verdicts, split into those that rank it and those that estimate p_correct."""

    rank_scores: list[float] = field(default_factory=list)
    rank_dists: list[list[float]] = field(default_factory=list)
    held_scores: list[float] = field(default_factory=list)
    held_dists: list[list[float]] = field(default_factory=list)


def _verdict_split(judgments: pa.Table, holdout: bool, distributions: bool) -> dict[tuple[str, int], _Verdicts]:
    """The current judge's verdicts per response; with ``holdout``, odd-numbered ones are held out.

    Why a split: the chosen response is the one whose verdicts came out
    highest, so the same verdicts overstate how sure the label is (four
    identical responses give a mean P(chosen wins) of about 0.8). Verdicts
    the selection never saw are independent of it, so an estimate from them
    is unbiased: 0.5 in expectation when the responses do not differ. Without
    ``holdout`` both parts are all verdicts (the in-sample estimate).
    ``distributions``: also collect the verdicts' score distributions.
    """
    out: dict[tuple[str, int], _Verdicts] = defaultdict(_Verdicts)
    cur = judgments.filter(pc.equal(judgments["judge_model"], "current"))
    columns = [cur[c].to_pylist() for c in ("prompt_id", "sample_idx", "judge_idx", "score")]
    dists = cur["score_probs"].to_pylist() if distributions else [None] * cur.num_rows
    for pid, k, idx, score, dist in zip(*columns, dists):
        v = out[(pid, k)]
        held = holdout and idx % 2 == 1
        for scores, ds in ([(v.held_scores, v.held_dists)] if held else
                           [(v.rank_scores, v.rank_dists)] + ([] if holdout else [(v.held_scores, v.held_dists)])):
            if score is not None:
                scores.append(score)
            if dist is not None:
                ds.append(dist)
    return out


def select(
    generations: pa.Table,
    rewards: pa.Table,
    judgments: pa.Table,
    sel: Selection,
    policy_is_reference: bool,
    previous_is_reference: bool = False,
) -> pa.Table:
    """Candidate pairs of every prompt in ``generations`` with all annotations, verdicts, weights and labels.

    ``policy_is_reference``: the scoring policy is the reference model itself
    (iteration 1), so implicit rewards are undefined there (None), not zero.
    ``previous_is_reference``: the previous model is the reference (iteration
    2 with the base model as reference), so its implicit rewards are all zero;
    implicit-reward consistency then ranks by its per-token likelihood, as
    CREAM does for a model without a reference.
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
    verdicts = _verdict_split(judgments, sel.holdout_verdicts, sel.judge_signal == "expected")

    def judge_score(key: tuple[str, int]) -> float | None:
        if not sel.holdout_verdicts:
            return rew[key]["judge_expected" if sel.judge_signal == "expected" else "judge_mean"]
        v = verdicts[key]
        if sel.judge_signal == "expected":
            return _mean([sum(i * q for i, q in enumerate(d)) for d in v.rank_dists])
        return _mean(v.rank_scores)

    def rank_score(key: tuple[str, int]) -> float | None:
        if sel.rank_by == "random":
            return random_score(sel.seed, *key)
        return judge_score(key) if sel.rank_by == "judge" else rew[key]["logp_policy_norm"]

    def implicit(key: tuple[str, int], logp_col: str) -> float | None:
        r = rew[key]
        if policy_is_reference and logp_col == "logp_policy":
            return None
        return _implicit(r[logp_col], r["logp_ref"], r["num_tokens"], sel.length_normalized)

    def likelihood_change(key: tuple[str, int]) -> float | None:
        return _difference(rew[key]["logp_policy_norm"], rew[key]["logp_prev_norm"])

    def reward_pair(key: tuple[str, int]) -> tuple[float | None, float | None]:
        r = rew[key]
        if sel.consistency_source == "judge":
            return r["judge_mean"], r["judge_mean_prev"]
        if sel.consistency_source == "likelihood":
            return r["logp_policy_norm"], r["logp_prev_norm"]
        return implicit(key, "logp_policy"), r["logp_prev_norm"] if previous_is_reference else implicit(key, "logp_prev")

    rows: list[Candidate | Unpaired] = []
    for pid in sorted(prompts):
        keys = sorted(keys_of[pid])
        cur, prev = zip(*(reward_pair(k) for k in keys)) if keys else ((), ())
        c_prompt = consistency(list(cur), list(prev))
        scored = [Scored(k[1], s) for k in keys if k in rew and (s := rank_score(k)) is not None]
        if len(scored) < 2:
            rows.append(Unpaired(pid, prompts[pid], c_prompt))
            continue
        for chosen, rejected, reason in sel.strategy.pairs(scored):
            kc, kr = (pid, chosen.sample_idx), (pid, rejected.sample_idx)
            c, r = gen[kc], gen[kr]
            vc, vr = verdicts[kc], verdicts[kr]
            if sel.judge_signal == "expected":
                p_correct = _mixture_beats(vc.held_dists, vr.held_dists)
            else:
                p_correct = p_chosen_beats_rejected(vc.held_scores, vr.held_scores)
            rows.append(Candidate(
                prompt_id=pid, prompt=prompts[pid], consistency=c_prompt, chosen=c["response"], rejected=r["response"],
                chosen_idx=chosen.sample_idx, rejected_idx=rejected.sample_idx,
                margin=chosen.score - rejected.score, p_correct=p_correct,
                chosen_finish_reason=c["finish_reason"], rejected_finish_reason=r["finish_reason"],
                implicit_margin=_difference(implicit(kc, "logp_policy"), implicit(kr, "logp_policy"), sel.beta),
                likelihood_margin=_difference(rew[kc]["logp_policy_norm"], rew[kr]["logp_policy_norm"]),
                likelihood_change_margin=_difference(likelihood_change(kc), likelihood_change(kr)),
                uncertainty=_mc_uncertainty(rew[kc], rew[kr], sel),
                chosen_correct=_correct(rew[kc]), rejected_correct=_correct(rew[kr]),
                drop_reason=reason, previous_rewards=any(p is not None for p in prev),
            ))
    return _decide(rows, sel)


def random_score(seed: int, prompt_id: str, sample_idx: int) -> float:
    """A score on the judge's 0..5 scale that knows nothing of the response (``rank_by: random``, the control arm):
    uniform, fixed by the run seed and the response's key, so a rerun or a replay draws the same pairs."""
    digest = hashlib.sha256(f"{seed}\x1frank\x1f{prompt_id}\x1f{sample_idx}".encode()).digest()
    return 5.0 * int.from_bytes(digest[:8], "big") / 2**64


def _correct(reward: Row) -> bool | None:
    """Whether a response is correct, where the grader could tell (None: no reference answer, or ungradable)."""
    return None if reward.get("grade_rule") == UNGRADABLE else reward.get("correct")


def _mixture_beats(chosen: list[list[float]], rejected: list[list[float]]) -> float | None:
    if not chosen or not rejected:
        return None
    mix_c = [sum(d[i] for d in chosen) / len(chosen) for i in range(len(chosen[0]))]
    mix_r = [sum(d[i] for d in rejected) / len(rejected) for i in range(len(rejected[0]))]
    return _dist_beats(mix_c, mix_r)


def _mc_uncertainty(c: Row, r: Row, sel: Selection) -> float | None:
    """The pair's uncertainty over the T MC-dropout passes of its per-token implicit margin.

    Each pass is compared with the reference log-prob computed by the same
    model code without dropout (``logp_mc_ref``), per response token, so the
    noise of a pass does not grow with the response's length. None where the
    passes were not run (MC-dropout off, or the policy is the reference).
    """
    mc_c, mc_r = c.get("logp_mc"), r.get("logp_mc")
    if not mc_c or not mc_r or c.get("logp_mc_ref") is None or r.get("logp_mc_ref") is None:
        return None
    margins = [sel.beta * ((a - c["logp_mc_ref"]) / max(c["num_tokens"], 1) - (b - r["logp_mc_ref"]) / max(r["num_tokens"], 1))
               for a, b in zip(mc_c, mc_r, strict=True)]
    return {"flip": flip, "bald": bald, "variance": variance}[sel.mc_measure](margins)


def _decide(rows: list[Candidate | Unpaired], sel: Selection) -> pa.Table:
    candidates = [r for r in rows if isinstance(r, Candidate) and r.drop_reason is None]
    verdicts = {f.name: f.verdicts(candidates) for f in sel.filters}  # one per candidate, in order
    per_prompt = {r.prompt_id: r.consistency for r in candidates}  # C is per prompt: CREAM averages prompts
    defined_c = [c for c in per_prompt.values() if c is not None]
    mean_c = sum(defined_c) / len(defined_c) if defined_c else None
    out = []
    judged = 0  # candidates seen so far
    for r in rows:
        row = {name: None for name in PAIRS.names} | {f"pass_{f.name}": None for f in sel.filters}
        row.update({f.name: getattr(r, f.name) for f in fields(r) if f.name in row})
        weight = 0.0
        if isinstance(r, Candidate) and r.drop_reason is None:
            weight = 1.0
            for f in sel.filters:
                v = verdicts[f.name][judged]
                row[f"pass_{f.name}"] = v
                if v is False:
                    if f.name in sel.downweight_filters:
                        weight *= sel.downweight
                    elif row["drop_reason"] is None:
                        row["drop_reason"] = f.name
            judged += 1
            if row["drop_reason"] is not None:
                weight = 0.0
        row["kept"] = row["drop_reason"] is None
        row["weight"] = weight
        row["label_p"] = _label(r, sel.label, mean_c) if isinstance(r, Candidate) else None
        out.append(row)
    schema = PAIRS
    for f in sel.filters:
        schema = schema.append(pa.field(f"pass_{f.name}", pa.bool_()))
    return pa.Table.from_pylist(out, schema=schema)


def _label(r: Candidate, label: SoftLabel, mean_c: float | None) -> float:
    fallback = 1.0 if mean_c is None else mean_c  # no C anywhere (iteration 1): plain DPO
    if label.kind == "consistency":
        return fallback if r.consistency is None else r.consistency
    if label.kind == "mean_consistency":
        return fallback
    if label.kind == "score_margin":
        return sigmoid(r.margin / label.temperature)
    return 1.0


def make_selection(cfg: RunConfig) -> Selection:
    """The configured pair strategy, filters (in the order they are checked) and soft label."""
    s = cfg.selection
    filters: list[Filter] = []
    if s.consistency.mode == "filter":
        filters.append(ConsistencyFilter(s.consistency.threshold, s.consistency.undefined))
    if s.agreement.enabled:
        filters.append(AgreementFilter(s.agreement.confidence if s.agreement.require_confident else None,
                                       s.agreement.signal))
    if s.judge_uncertainty.p_min is not None:
        filters.append(JudgeUncertaintyFilter(s.judge_uncertainty.p_min))
    downweighted: tuple[str, ...] = ()
    if s.mc_dropout.passes > 0 and s.mc_dropout.fraction > 0:
        mc = MCDropoutFilter(s.mc_dropout.fraction)
        filters.append(mc)
        if s.mc_dropout.action == "downweight":
            downweighted = (mc.name,)
    label = {"dyn": SoftLabel("consistency"), "avg": SoftLabel("mean_consistency")}.get(
        s.consistency.mode, SoftLabel("score_margin", cfg.dpo.soft_temperature) if cfg.dpo.loss == "soft" else SoftLabel()
    )
    return Selection(
        strategy=BestVsWorst() if s.strategy == "best_vs_worst" else MarginPairs(s.min_margin, s.max_pairs_per_prompt),
        filters=tuple(filters), label=label, beta=cfg.dpo.beta, judge_signal=cfg.judge.score_source, rank_by=s.rank_by,
        seed=cfg.seed,
        holdout_verdicts=s.judge_uncertainty.p_min is not None or (s.agreement.enabled and s.agreement.require_confident),
        length_normalized=s.length_normalized, consistency_source=s.consistency.source,
        mc_measure=s.mc_dropout.measure, downweight_filters=downweighted, downweight=s.mc_dropout.downweight,
    )


def select_iteration(generations: pa.Table, rewards: pa.Table, judgments: pa.Table, sel: Selection,
                     models: Models) -> pa.Table:
    """``select`` on one iteration's tables, with the models that played each part there (the loop's select
    stage and ``selfreward replay`` both call this)."""
    return select(generations, rewards, judgments, sel, models.policy_is_reference, models.previous_is_reference)
