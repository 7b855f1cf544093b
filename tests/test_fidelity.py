"""The label-noise simulator (benchmarks/fidelity.py): each filter helps where its assumption holds, beyond a random
drop of the same size at 5,000 pairs, and claims nothing where it does not."""

import pytest

from benchmarks import fidelity
from orchestrator.evaluation.stats import Estimate

PROMPTS = 5000  # best-vs-worst: one candidate pair per prompt


@pytest.fixture(scope="module")
def worlds():
    return {noise: fidelity.world(noise, PROMPTS, seed=0) for noise in fidelity.NOISE}


def run(worlds, noise, config, overrides=()):
    return fidelity.evaluate(worlds[noise], fidelity.recipe_config(config, list(overrides)))


def passed(result, name):
    f = result["label_quality"]["by_filter"][name]["passed"]
    return f, Estimate.from_json(f["precision"])


def helps(result, name):
    """The filter's passed pairs are more precise than a random drop of the same size, beyond its 95% range."""
    f, precision = passed(result, name)
    assert f["decided"] >= 1000, f
    return precision.lo > f["random_drop"]["range95"][1] and f["verdict"] == "helps"


CONSISTENCY = ("cream.yaml", ["selection.consistency.mode=filter", "dpo.loss=dpo"])
LIKELIHOOD_AGREEMENT = ("scir.yaml", ["selection.agreement.signal=likelihood"])


def test_the_worlds_are_as_large_as_claimed(worlds):
    srlm = run(worlds, "independent", "srlm.yaml")
    assert srlm["pairs_built"] >= PROMPTS and srlm["label_quality"]["candidates"]["decided"] >= 2500
    # Hard labels: the loss pushes every kept pair toward its chosen response, so the share pushed toward the
    # truth is the kept-label precision itself.
    assert srlm["gradient_toward_truth"]["pairs"] == srlm["label_quality"]["kept"]["precision"]


def test_each_filter_helps_where_its_assumption_holds(worlds):
    upo = run(worlds, "independent", "upo.yaml")
    assert helps(upo, "judge_uncertain") and helps(upo, "mc_dropout_uncertain")  # noise that K samples and T passes see
    for noise in ("independent", "drift"):  # the two judges' errors differ
        assert helps(run(worlds, noise, *CONSISTENCY), "low_consistency"), noise
    for noise in ("independent", "drift", "stable_bias", "length_bias"):  # an internal reward with its own errors
        assert helps(run(worlds, noise, "scir.yaml"), "reward_disagreement"), noise
        assert helps(run(worlds, noise, *LIKELIHOOD_AGREEMENT), "reward_disagreement"), noise


def test_no_filter_claims_a_gain_where_its_assumption_fails(worlds):
    # A bias both judges share is consistent: consistency drops nothing.
    for noise in ("stable_bias", "length_bias"):
        r = run(worlds, noise, *CONSISTENCY)
        assert r["label_quality"]["by_filter"]["low_consistency"]["passed"]["verdict"] in ("no drop", "no evidence"), noise
    # A biased judge's verdicts agree with each other: sample uncertainty sees nothing.
    for noise in ("drift", "stable_bias", "length_bias"):
        r = run(worlds, noise, "upo.yaml")
        assert r["label_quality"]["by_filter"]["judge_uncertain"]["passed"]["verdict"] != "helps", noise
    # Errors that do not grow with the confusability the passes measure: MC-dropout finds nothing.
    r = run(worlds, "length_bias", "upo.yaml")
    assert r["label_quality"]["by_filter"]["mc_dropout_uncertain"]["passed"]["verdict"] != "helps"
    # A constant judge: no pair at all, nothing measured, nothing claimed.
    r = run(worlds, "constant", "trusted.yaml")
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
