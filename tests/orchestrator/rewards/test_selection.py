"""The select stage: strategies, filters, weights and soft labels by hand, and its invariants as properties."""

from dataclasses import dataclass, field

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.evaluation.labels import agreement_rate, consistency_summary, label_quality
from orchestrator.rewards.selection import (
    DROP_BELOW_MARGIN,
    DROP_FEW_VALID,
    DROP_OVER_CAP,
    DROP_TIE,
    AgreementFilter,
    BestVsWorst,
    ConsistencyFilter,
    JudgeUncertaintyFilter,
    MarginPairs,
    MCDropoutFilter,
    Selection,
    SoftLabel,
    select,
)
from orchestrator.run import artifacts


@dataclass
class R:
    """One response: its judge samples and what the score stage would have recorded."""

    scores: list[float | None]
    prev: float | None = None  # judge_mean_prev
    logp: float = -10.0  # logp_policy
    logp_prev: float | None = None
    ref: float = -10.0  # logp_ref
    correct: bool | None = None
    rule: str | None = None  # grade_rule (default: "explicit" where correct is known)
    mc: list[float] | None = None
    tokens: int = 5
    probs: list[list[float]] = field(default_factory=list)


def tables(spec: dict[str, list[R]]):
    gens, rewards, judg = [], [], []
    for pid, responses in spec.items():
        for k, r in enumerate(responses):
            gens.append({"iteration": 1, "prompt_id": pid, "prompt": f"q-{pid}", "sample_idx": k,
                         "response": f"{pid}-r{k}", "num_tokens": r.tokens, "finish_reason": "stop", "seed": k})
            valid = [s for s in r.scores if s is not None]
            rewards.append({"prompt_id": pid, "sample_idx": k, "judge_mean": sum(valid) / len(valid) if valid else None,
                            "judge_std": 0.0, "judge_valid": len(valid), "judge_mean_prev": r.prev,
                            "logp_policy": r.logp, "logp_ref": r.ref, "num_tokens": r.tokens, "correct": r.correct,
                            "logp_prev": r.logp_prev, "logp_policy_norm": r.logp / r.tokens,
                            "logp_prev_norm": None if r.logp_prev is None else r.logp_prev / r.tokens,
                            "grade_rule": r.rule or (None if r.correct is None else "explicit"),
                            "logp_mc": r.mc, "logp_mc_ref": None if r.mc is None else r.ref,
                            "judge_expected": (sum(i * p for i, p in enumerate(r.probs[0])) if r.probs else None)})
            for j, s in enumerate(r.scores):
                judg.append({"prompt_id": pid, "sample_idx": k, "judge_model": "current", "judge_idx": j,
                             "judge_text": "", "score": s, "seed": 0, "num_tokens": 1,
                             "score_probs": r.probs[j] if r.probs else None})
    return (pa.Table.from_pylist(gens, schema=artifacts.GENERATIONS),
            pa.Table.from_pylist(rewards, schema=artifacts.REWARDS),
            pa.Table.from_pylist(judg, schema=artifacts.JUDGMENTS))


def rows(spec, sel=Selection(), policy_is_reference=False, previous_is_reference=False):
    table = select(*tables(spec), sel, policy_is_reference, previous_is_reference)
    artifacts.check_contract(table, "pairs")
    return table, table.to_pylist()


def test_best_vs_worst_ties_and_invalid():
    table, out = rows({
        "a": [R([3.0, 4.0]), R([1.0, 1.0]), R([5.0, 5.0]), R([2.0, None])],  # best 2 (5.0), worst 1 (1.0)
        "b": [R([2.0]), R([2.0]), R([2.0])],  # all tied
        "c": [R([None]), R([4.0]), R([None])],  # one valid only
        "d": [R([4.0]), R([1.0]), R([4.0]), R([1.0])],  # equal best/worst: lowest idx best, highest idx worst
    })
    by = {x["prompt_id"]: x for x in out}
    assert table.num_rows == 4
    a = by["a"]
    assert (a["chosen_idx"], a["rejected_idx"], a["kept"], a["drop_reason"]) == (2, 1, True, None)
    assert a["margin"] == pytest.approx(4.0) and a["chosen"] == "a-r2" and a["weight"] == 1.0
    assert a["p_correct"] == pytest.approx(1.0) and a["label_p"] == 1.0
    assert (by["b"]["kept"], by["b"]["drop_reason"], by["b"]["margin"], by["b"]["weight"]) == (False, DROP_TIE, 0.0, 0.0)
    assert (by["c"]["kept"], by["c"]["drop_reason"], by["c"]["chosen"]) == (False, DROP_FEW_VALID, None)
    assert (by["d"]["chosen_idx"], by["d"]["rejected_idx"]) == (0, 3)
    assert all(x["consistency"] is None for x in out)  # no previous judge: null, not invented


def test_margin_strategy_caps_pairs_per_prompt():
    # Scores 5, 4, 2, 2: pairs by margin 3 (0-2), 3 (0-3), 2 (1-2), 2 (1-3), 1 (0-1), 0 (2-3).
    _, out = rows({"p": [R([5.0]), R([4.0]), R([2.0]), R([2.0])]}, Selection(strategy=MarginPairs(min_margin=2.0, cap=3)))
    got = [(x["chosen_idx"], x["rejected_idx"], x["drop_reason"]) for x in out]
    assert got == [(0, 2, None), (0, 3, None), (1, 2, None), (1, 3, DROP_OVER_CAP), (0, 1, DROP_BELOW_MARGIN), (2, 3, DROP_TIE)]


def test_consistency_per_prompt_and_filter():
    spec = {
        "same": [R([1.0], prev=1.0), R([3.0], prev=2.0), R([5.0], prev=4.0)],  # same order: C = 1
        "flip": [R([1.0], prev=4.0), R([3.0], prev=2.0), R([5.0], prev=1.0)],  # reversed: C = 0
        "new": [R([1.0]), R([5.0])],  # no previous verdicts: undefined, and the filter does not apply
        "flat": [R([1.0], prev=3.0), R([5.0], prev=3.0)],  # the previous judge ties them: undefined, untrusted
    }
    sel = Selection(filters=(ConsistencyFilter(0.5),))
    table, out = rows(spec, sel)
    by = {x["prompt_id"]: x for x in out}
    assert (by["same"]["consistency"], by["same"]["kept"], by["same"]["pass_low_consistency"]) == (1.0, True, True)
    assert (by["flip"]["consistency"], by["flip"]["kept"], by["flip"]["drop_reason"]) == (0.0, False, "low_consistency")
    assert (by["new"]["consistency"], by["new"]["kept"], by["new"]["pass_low_consistency"]) == (None, True, None)
    assert (by["flat"]["consistency"], by["flat"]["kept"], by["flat"]["drop_reason"]) == (None, False, "low_consistency")
    _, kept = rows(spec, Selection(filters=(ConsistencyFilter(0.5, undefined="keep"),)))
    assert [x["pass_low_consistency"] for x in kept if x["prompt_id"] == "flat"] == [True]
    summary = consistency_summary(table)
    assert summary["mean_consistency"]["value"] == 0.5 and summary["mean_consistency"]["n"] == 2
    assert (summary["consistency_prompts"], summary["consistency_undefined_prompts"]) == (2, 2)


def test_cream_soft_labels_dyn_and_avg():
    spec = {
        "a": [R([1.0], prev=1.0), R([3.0], prev=3.0), R([5.0], prev=2.0)],  # tau = 1/3 -> C = 2/3
        "b": [R([1.0], prev=1.0), R([5.0], prev=2.0)],  # C = 1
        "c": [R([1.0]), R([5.0])],  # undefined
    }
    _, dyn = rows(spec, Selection(label=SoftLabel("consistency")))
    # An undefined C is the mean C of the iteration's prompts, as CREAM's code sets it: (2/3 + 1) / 2.
    assert [x["label_p"] for x in dyn] == pytest.approx([2 / 3, 1.0, 5 / 6])
    _, avg = rows(spec, Selection(label=SoftLabel("mean_consistency")))
    assert [x["label_p"] for x in avg] == pytest.approx([5 / 6] * 3)
    # 'avg' averages prompts, not pairs: prompt a with three margin pairs still counts once.
    _, margin_avg = rows(spec, Selection(strategy=MarginPairs(0.5, 3), label=SoftLabel("mean_consistency")))
    assert len(margin_avg) == 5 and all(x["label_p"] == pytest.approx(5 / 6) for x in margin_avg)
    # No prompt with a C at all (iteration 1): plain DPO.
    _, none = rows({"c": [R([1.0]), R([5.0])]}, Selection(label=SoftLabel("consistency")))
    assert none[0]["label_p"] == 1.0
    _, soft = rows(spec, Selection(label=SoftLabel("score_margin", temperature=2.0)))
    assert soft[0]["label_p"] == pytest.approx(1 / (1 + pytest.importorskip("math").exp(-2.0)))


def test_agreement_filter_and_rate():
    spec = {
        # chosen (idx 1) has the higher implicit reward too: agree
        "yes": [R([1.0], logp=-12.0, ref=-10.0), R([5.0], logp=-8.0, ref=-10.0)],
        # implicit reward prefers the judge's rejected one: disagree
        "no": [R([1.0], logp=-8.0, ref=-10.0), R([5.0], logp=-12.0, ref=-10.0)],
    }
    sel = Selection(filters=(AgreementFilter(),), beta=0.1)
    table, out = rows(spec, sel)
    by = {x["prompt_id"]: x for x in out}
    assert by["yes"]["implicit_margin"] == pytest.approx(0.1 * (2.0 - (-2.0)))
    assert by["yes"]["kept"] and not by["no"]["kept"] and by["no"]["drop_reason"] == "reward_disagreement"
    rate = agreement_rate(table)["agreement_rate"]
    assert (rate["value"], rate["k"], rate["n"]) == (0.5, 1, 2) and rate["ci95"] == pytest.approx([0.0945, 0.9055], abs=1e-4)
    # At iteration 1 the policy is the reference: no implicit reward, the filter does not apply.
    _, first = rows(spec, sel, policy_is_reference=True)
    assert all(x["kept"] and x["implicit_margin"] is None and x["pass_reward_disagreement"] is None for x in first)
    # Confident agreement: sigmoid(0.4) = 0.599 < 0.6 fails even though the signs agree.
    _, conf = rows(spec, Selection(filters=(AgreementFilter(confidence=0.6),), beta=0.1))
    assert not any(x["kept"] for x in conf)


def test_length_normalized_implicit_reward():
    spec = {"p": [R([1.0], logp=-20.0, ref=-10.0, tokens=10), R([5.0], logp=-12.0, ref=-10.0, tokens=2)]}
    _, out = rows(spec, Selection(beta=1.0, length_normalized=True))
    assert out[0]["implicit_margin"] == pytest.approx(-1.0 - (-1.0))


def test_judge_uncertainty_filter():
    spec = {
        "sure": [R([1.0, 1.0, 2.0]), R([4.0, 5.0, 4.0])],
        # chosen [4, 3, 2] vs rejected [1, 4, 2]: 4 beats 1 and 2, ties 4; 3 beats 1 and 2; 2 beats 1, ties 2
        # -> P = (2 + 0.5 + 2 + 1 + 0.5) / 9 = 6 / 9
        "unsure": [R([1.0, 4.0, 2.0]), R([4.0, 3.0, 2.0])],
    }
    _, out = rows(spec, Selection(filters=(JudgeUncertaintyFilter(0.7),)))
    by = {x["prompt_id"]: x for x in out}
    assert by["unsure"]["p_correct"] == pytest.approx(6 / 9)
    assert by["sure"]["kept"] and by["unsure"]["drop_reason"] == "judge_uncertain"


def test_judge_uncertainty_is_unbiased_on_identical_responses():
    """Four responses a judge cannot tell apart: verdicts drawn from one distribution for all of them. Estimated on
    the verdicts the pair was chosen on, P(chosen wins) comes out near 0.8; on held-out verdicts its mean is 0.5
    within its interval, and the share passing p_min is what chance predicts for two independent responses."""
    import random

    from orchestrator.evaluation import stats

    rng = random.Random(7)
    levels, weights = [1.0, 2.0, 3.0, 4.0], [0.2, 0.3, 0.3, 0.2]
    spec = {f"p{i}": [R(rng.choices(levels, weights, k=4)) for _ in range(4)] for i in range(3000)}
    _, biased = rows(spec, Selection())
    in_sample = [x["p_correct"] for x in biased if x["p_correct"] is not None and x["drop_reason"] is None]
    assert stats.mean(in_sample).lo > 0.7  # the selection-biased estimate the filter used to read
    _, held = rows(spec, Selection(holdout_verdicts=True, filters=(JudgeUncertaintyFilter(0.75),)))
    cands = [x for x in held if x["drop_reason"] in (None, "judge_uncertain")]
    estimate = stats.mean([x["p_correct"] for x in cands])
    assert estimate.lo <= 0.5 <= estimate.hi and len(cands) > 2000
    # Chance: two held-out verdicts per response, P(Mann-Whitney estimate >= 0.75) for independent draws.
    draws = [(rng.choices(levels, weights, k=2), rng.choices(levels, weights, k=2)) for _ in range(200_000)]
    chance = sum(sum((a > b) + 0.5 * (a == b) for a in c for b in r) / 4 >= 0.75 for c, r in draws) / len(draws)
    passed = stats.proportion(sum(x["kept"] for x in cands), len(cands))
    assert passed.lo <= chance <= passed.hi
    # The pair is ranked on the even verdicts only: its margin is theirs.
    one = rows({"p": [R([5.0, 0.0, 5.0, 0.0]), R([1.0, 5.0, 1.0, 5.0])]}, Selection(holdout_verdicts=True))[1][0]
    assert (one["chosen_idx"], one["margin"], one["p_correct"]) == (0, 4.0, 0.0)


def test_internal_likelihood_signals_per_pair_and_in_every_role():
    spec = {
        # chosen by the judge (idx 1) is also more likely per token under the policy, and gained likelihood since
        # the previous model; idx 0 lost likelihood.
        "p": [R([1.0], logp=-20.0, logp_prev=-10.0, tokens=10), R([5.0], logp=-8.0, logp_prev=-12.0, tokens=4)],
    }
    _, out = rows(spec, Selection(), policy_is_reference=True)
    assert out[0]["likelihood_margin"] == pytest.approx(-2.0 - (-2.0))
    assert out[0]["likelihood_change_margin"] == pytest.approx((-2.0 + 3.0) - (-2.0 + 1.0))
    # Agreement on the likelihood is defined at iteration 1 (policy = reference), unlike the implicit reward.
    _, agree = rows(spec, Selection(filters=(AgreementFilter(signal="likelihood_change"),)), policy_is_reference=True)
    assert agree[0]["pass_reward_disagreement"] is True and agree[0]["implicit_margin"] is None
    # Pairs ranked by likelihood: idx 0 (-2.0 per token) ties idx 1 (-2.0): a tie, no pair.
    _, lik = rows(spec, Selection(rank_by="likelihood"))
    assert lik[0]["drop_reason"] == "tie"
    # Consistency of the likelihood rankings under the current and the previous model.
    _, cons = rows({"q": [R([1.0], logp=-30.0, logp_prev=-20.0, tokens=10), R([2.0], logp=-10.0, logp_prev=-9.0, tokens=10),
                          R([3.0], logp=-20.0, logp_prev=-10.0, tokens=10)]}, Selection(consistency_source="likelihood"))
    # current -3, -1, -2 vs previous -2, -0.9, -1: same order, C = 1.
    assert cons[0]["consistency"] == pytest.approx(1.0)


def test_random_ranking_is_a_control_that_ignores_quality_and_repeats_per_seed():
    """``rank_by: random`` (the improvement experiment's control arm): which response is chosen is independent of the
    judge, of correctness and of the likelihood, drawn the same way on a rerun and another way at another seed."""
    spec = {f"p{i}": [R([5.0], correct=True, logp=-1.0), R([0.0], correct=False, logp=-50.0), R([2.0], logp=-9.0)]
            for i in range(200)}

    def chosen(seed):
        return [(r["prompt_id"], r["chosen_idx"], r["rejected_idx"]) for r in rows(spec, Selection(rank_by="random",
                                                                                                    seed=seed))[1]]

    first = chosen(0)
    assert first == chosen(0) and first != chosen(1)
    assert len(first) == 200 and all(c != r for _, c, r in first)  # one pair per prompt, two different responses
    # The judge would always choose idx 0 over idx 1; at random each of the six ordered pairs turns up about as often.
    counts = {(c, r): sum((c, r) == (x, y) for _, x, y in first) for c in range(3) for r in range(3) if c != r}
    assert all(15 <= n <= 55 for n in counts.values()), counts


def test_implicit_consistency_ranks_the_reference_model_by_likelihood():
    """At iteration 2 the previous model is the reference: its implicit rewards are all 0, so CREAM ranks it by
    per-token likelihood instead."""
    # The previous model is the reference (logp_prev = logp_ref). Current implicit rewards: -2 and -3; previous
    # per-token likelihoods: -1.0 and -1.2: the same order.
    spec = {"q": [R([1.0], logp=-12.0, ref=-10.0, logp_prev=-10.0, tokens=10),
                  R([2.0], logp=-9.0, ref=-6.0, logp_prev=-6.0, tokens=5)]}
    sel = Selection(consistency_source="implicit")
    assert rows(spec, sel)[1][0]["consistency"] is None  # 0 and 0: no ranking
    assert rows(spec, sel, previous_is_reference=True)[1][0]["consistency"] == pytest.approx(1.0)


def test_expected_score_source_uses_distributions():
    onehot = [[0, 0, 0, 0, 1.0, 0]]
    spread = [[0.5, 0, 0, 0, 0, 0.5]]  # E = 2.5
    spec = {"p": [R([4.0], probs=onehot), R([2.0], probs=spread)]}
    _, out = rows(spec, Selection(judge_signal="expected"))
    # chosen has E=4 vs E=2.5; P(4 beats {0 or 5 w.p. 1/2}) = 0.5
    assert (out[0]["chosen_idx"], out[0]["margin"], out[0]["p_correct"]) == (0, pytest.approx(1.5), pytest.approx(0.5))


def test_mc_dropout_drop_and_downweight():
    def mc(spread):
        return [-10.0 + spread, -10.0 - spread]
    # Passes differ from the reference (-10, by the same code) by +-spread over 5 tokens: per-token margins +-spread/5.
    spec = {f"p{i}": [R([1.0], mc=mc(0.0)), R([5.0], mc=mc(float(i)))] for i in range(4)}
    sel = Selection(filters=(MCDropoutFilter(0.5),), beta=1.0, mc_measure="variance")
    _, out = rows(spec, sel)
    assert [x["uncertainty"] for x in out] == pytest.approx([0.0, 1 / 25, 4 / 25, 9 / 25])
    assert [x["kept"] for x in out] == [True, True, False, False]
    _, down = rows(spec, Selection(filters=(MCDropoutFilter(0.5),), beta=1.0, mc_measure="variance",
                                   downweight_filters=("mc_dropout_uncertain",), downweight=0.25))
    assert [x["kept"] for x in down] == [True] * 4 and [x["weight"] for x in down] == [1.0, 1.0, 0.25, 0.25]
    # Where the passes were not run (the policy is the reference), the filter does not apply.
    off = {f"p{i}": [R([1.0]), R([5.0])] for i in range(2)}
    assert all(x["pass_mc_dropout_uncertain"] is None and x["kept"] for x in rows(off, sel)[1])


def test_label_quality_by_filter():
    kinds = {
        "right_kept": [R([1.0], correct=False, prev=1.0), R([5.0], correct=True, prev=5.0)],
        "wrong_dropped": [R([1.0], correct=True, prev=5.0), R([5.0], correct=False, prev=1.0)],
        "both_correct": [R([1.0], correct=True, prev=1.0), R([5.0], correct=True, prev=5.0)],
        "no_answer": [R([1.0]), R([5.0])],
        # The rejected response states no answer: the pair decides nothing, though it counts as incorrect.
        "ungradable": [R([1.0], correct=False, prev=1.0, rule="ungradable"), R([5.0], correct=True, prev=5.0)],
    }
    spec = {f"{kind}{i}": responses for kind, responses in kinds.items() for i in range(5)}  # five prompts of each
    table, out = rows(spec, Selection(filters=(ConsistencyFilter(0.5),)))
    by = {x["prompt_id"]: x for x in out}
    assert (by["right_kept0"]["chosen_correct"], by["right_kept0"]["rejected_correct"]) == (True, False)
    assert (by["ungradable0"]["chosen_correct"], by["ungradable0"]["rejected_correct"]) == (True, None)
    assert (by["no_answer0"]["pass_low_consistency"], by["no_answer0"]["kept"]) == (None, True)  # no previous verdicts
    q = label_quality(table)
    assert {k: q["kept"][k] for k in ("pairs", "decided", "right", "prompts")} == \
        {"pairs": 20, "decided": 5, "right": 5, "prompts": 5}
    assert q["kept"]["precision"]["value"] == 1.0 and q["kept"]["precision"]["interval"] == "prompts"
    # Kept 20 of 25 candidates, whose decided ones are five right and five wrong pairs: chance about 0.5, and every
    # resample over prompts keeps only right labels.
    assert q["kept"]["random_drop"]["size"] == 20 and q["kept"]["random_drop"]["of"] == 25
    assert q["kept"]["random_drop"]["precision"] == pytest.approx(0.5, abs=0.02)
    assert q["kept"]["verdict"] == "helps" and q["kept"]["lift"]["ci95"][0] > 0
    assert {k: q["dropped"][k] for k in ("pairs", "decided", "right")} == {"pairs": 5, "decided": 5, "right": 0}
    assert q["dropped"]["precision"]["value"] == 0.0
    assert q["by_filter"]["low_consistency"]["failed"]["precision"]["value"] == 0.0
    assert q["by_filter"]["low_consistency"]["not_applicable"] == 5
    # From fewer than five prompts nothing is measured: n/a with the counts and the reason.
    few = label_quality(rows({k: v for k, v in spec.items() if k[-1] in "01"}, Selection(filters=(ConsistencyFilter(0.5),)))[0])
    assert few["kept"]["precision"]["value"] is None and few["kept"]["precision"]["why"] == "2/2 from 2 prompts: fewer than 5"
    assert few["kept"]["verdict"] == "not measurable"
    empty = label_quality(rows({"no_answer": [R([1.0]), R([5.0])]}, Selection())[0])
    assert empty["kept"]["precision"] == {"value": None, "n": 0, "ci95": None, "interval": "none", "why": "no decided pair"}
    assert empty["kept"]["verdict"] == "no drop"


# --- properties ------------------------------------------------------------------

score = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]))
response = st.builds(
    R,
    scores=st.lists(score, min_size=1, max_size=3),
    prev=st.one_of(st.none(), st.sampled_from([0.0, 1.5, 3.0, 5.0])),
    logp=st.floats(-30, -1),
    ref=st.floats(-30, -1),
    correct=st.one_of(st.none(), st.booleans()),
    mc=st.lists(st.floats(-30, -1), min_size=3, max_size=3),
)
specs = st.dictionaries(st.sampled_from("abcdefgh"), st.lists(response, min_size=2, max_size=5), min_size=1)
selections = st.builds(
    lambda strategy, c, conf, p_min, frac, down: Selection(
        strategy=strategy,
        filters=tuple(f for f in (ConsistencyFilter(c) if c is not None else None,
                                  AgreementFilter(conf) if conf is not None else None,
                                  JudgeUncertaintyFilter(p_min) if p_min is not None else None,
                                  MCDropoutFilter(frac) if frac is not None else None) if f is not None),
        downweight_filters=("mc_dropout_uncertain",) if down else (),
    ),
    st.sampled_from([BestVsWorst(), MarginPairs(1.0, 2)]),
    st.one_of(st.none(), st.floats(0, 1)),
    st.one_of(st.none(), st.just(0.55)),
    st.one_of(st.none(), st.floats(0, 1)),
    st.one_of(st.none(), st.floats(0, 0.9)),
    st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(specs, selections, st.booleans())
def test_kept_pairs_satisfy_every_active_filter(spec, sel, first_iteration):
    table = select(*tables(spec), sel, first_iteration)
    artifacts.check_contract(table, "pairs")
    assert set(table["prompt_id"].to_pylist()) == set(spec)  # every prompt is accounted for
    for x in table.to_pylist():
        assert x["kept"] == (x["drop_reason"] is None)
        assert (x["weight"] > 0) == x["kept"] or (x["kept"] and x["weight"] == 0)
        assert x["consistency"] is None or 0.0 <= x["consistency"] <= 1.0
        if not x["kept"]:
            continue
        assert x["margin"] > 0 and x["chosen_idx"] != x["rejected_idx"]
        for f in sel.filters:
            verdict = x[f"pass_{f.name}"]
            assert verdict is not False or f.name in sel.downweight_filters
        if first_iteration:
            assert x["implicit_margin"] is None
