"""The label-noise simulator (benchmarks/fidelity.py): each filter helps where its assumption holds (its lift over a
random drop of the same size has an interval over prompts above 0, at 5,000 prompts), and claims no gain in the worlds
where that assumption fails: a judge whose bias its own samples cannot see, two judges that share their errors,
internal rewards that echo the judge's error, MC-dropout noise unrelated to it."""

import pytest

from benchmarks import fidelity
from benchmarks.fidelity import FAILS, HOLDS
from orchestrator.evaluation.stats import Estimate

PROMPTS = 5000  # best-vs-worst: one candidate pair per prompt


@pytest.fixture(scope="module")
def worlds():
    cache = {}

    def get(noise, assume=HOLDS):
        if (noise, assume) not in cache:
            cache[(noise, assume)] = fidelity.world(noise, PROMPTS, seed=0, assume=assume)
        return cache[(noise, assume)]

    return get


def run(world, config, overrides=()):
    return fidelity.evaluate(world, fidelity.recipe_config(config, list(overrides)))


def passed(result, name):
    return result["label_quality"]["by_filter"][name]["passed"]


def helps(result, name):
    """The filter's passed pairs beat a random drop of the same size: the lift's interval over prompts is above 0."""
    f = passed(result, name)
    assert f["decided"] >= 500 and f["prompts"] >= 500, f
    return f["verdict"] == "helps" and Estimate.from_json(f["lift"]).lo > 0


def claims_nothing(result, name):
    return passed(result, name)["verdict"] in ("no drop", "no evidence", "hurts", "not measurable", "not applicable")


CONSISTENCY = ("cream.yaml", ["selection.consistency.mode=filter", "dpo.loss=dpo"])
LIKELIHOOD_AGREEMENT = ("scir.yaml", ["selection.agreement.signal=likelihood"])
AGREEMENTS = (("scir.yaml", []), LIKELIHOOD_AGREEMENT)
MC = ("upo.yaml", fidelity.MC_DROPOUT)  # off in every shipped recipe; the simulator still tests it


def test_the_worlds_are_as_large_as_claimed(worlds):
    srlm = run(worlds("independent"), "srlm.yaml")
    assert srlm["pairs_built"] >= PROMPTS and srlm["label_quality"]["candidates"]["decided"] >= 1500
    # Hard labels: the loss pushes every kept pair toward its chosen response, so the share pushed toward the
    # truth is the kept-label precision itself.
    pushed, kept = Estimate.from_json(srlm["gradient_toward_truth"]["pairs"]), srlm["label_quality"]["kept"]
    assert (pushed.k, pushed.n) == (kept["right"], kept["decided"])


def test_each_filter_helps_where_its_assumption_holds(worlds):
    assert helps(run(worlds("independent"), "upo.yaml"), "judge_uncertain")  # verdict noise that the K samples see
    assert helps(run(worlds("independent"), *MC), "mc_dropout_uncertain")  # spread where the judge is confusable
    for noise in ("independent", "drift"):  # the two judges' errors differ
        assert helps(run(worlds(noise), *CONSISTENCY), "low_consistency"), noise
    for noise in ("independent", "drift", "stable_bias", "length_bias"):  # an internal reward with its own errors
        for recipe in AGREEMENTS:
            assert helps(run(worlds(noise), *recipe), "reward_disagreement"), (noise, recipe)


def test_no_filter_claims_a_gain_where_its_assumption_fails(worlds):
    # A bias both judges share is consistent: consistency cannot see it.
    for noise in ("stable_bias", "length_bias"):
        assert claims_nothing(run(worlds(noise), *CONSISTENCY), "low_consistency"), noise
    # A biased judge's verdicts agree with each other: sample uncertainty sees nothing.
    for noise in ("drift", "stable_bias", "length_bias"):
        assert claims_nothing(run(worlds(noise), "upo.yaml"), "judge_uncertain"), noise
    # MC-dropout spread unrelated to where the judge errs finds nothing, nor does it under a length bias.
    assert claims_nothing(run(worlds("independent", FAILS["untied_dropout"]), *MC), "mc_dropout_uncertain")
    assert claims_nothing(run(worlds("length_bias"), *MC), "mc_dropout_uncertain")
    # Internal rewards that echo the judge's error (wholly or half): agreeing with them adds nothing, or keeps the
    # judge's mistakes.
    for assume in (FAILS["echo"], FAILS["half_echo"]):
        for noise in ("independent", "stable_bias"):
            for recipe in AGREEMENTS:
                assert claims_nothing(run(worlds(noise, assume), *recipe), "reward_disagreement"), (noise, assume, recipe)
    echo = run(worlds("independent", FAILS["echo"]), "scir.yaml")
    assert passed(echo, "reward_disagreement")["verdict"] == "hurts"
    # A constant judge: no pair at all, nothing measured, nothing claimed.
    r = run(worlds("constant"), "trusted.yaml")
    assert r["pairs_kept"] == 0 and r["gradient_toward_truth"]["pairs"]["value"] is None
    assert {f["passed"]["verdict"] for f in r["label_quality"]["by_filter"].values()} <= {"no drop", "not measurable",
                                                                                  "not applicable"}


def test_a_position_biased_pairwise_judge_is_flagged_and_debiased():
    fair = fidelity.position_bias(bias=0.0)
    assert fair["degenerate"] is None
    assert fair["probability_decided_win_rate"] == pytest.approx(fair["true_win_rate"], abs=0.05)
    biased = fidelity.position_bias(bias=3.0)
    # Read from the first order only, the judge crowns M(t) far above the truth; both orders flag it.
    assert biased["first_order_only_win_rate"] > biased["true_win_rate"] + 0.25
    assert "first position" in biased["degenerate"]
