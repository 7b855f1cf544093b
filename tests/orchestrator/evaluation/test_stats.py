import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from orchestrator.evaluation import stats
from orchestrator.evaluation.stats import Estimate


@pytest.mark.parametrize("k, n, lo, hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
                                          (1, 1, 0.2065, 1.0)])
def test_wilson_against_published_values(k, n, lo, hi):
    got = stats.proportion(k, n)
    assert got.value == k / n and got.k == k and got.n == n and got.interval == "wilson"
    assert (got.lo, got.hi) == pytest.approx((lo, hi), abs=5e-5)


@pytest.mark.parametrize("k, n", [(9, 32), (3, 7), (48, 51), (0, 3)])
def test_wilson_against_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert stats.wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_wilson_bounds_are_exact_at_zero_and_all():
    for n in (1, 3, 7, 32, 1000):
        assert stats.wilson(0, n)[0] == 0.0 and stats.wilson(n, n)[1] == 1.0


def test_an_empty_proportion_is_unmeasured_not_zero():
    got = stats.proportion(0, 0, "no decided pair")
    assert got.value is None and got.n == 0 and got.why == "no decided pair"
    assert Estimate.from_json(got.to_json()) == got


def test_bootstrap_mean_by_hand():
    # Two items, 0 and 1: resampled means are 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% percentiles are 0 and 1.
    got = stats.mean([0.0, 1.0])
    assert got.value == 0.5 and (got.lo, got.hi) == (0.0, 1.0) and got.n == 2
    same = stats.mean([2.0, 2.0, 2.0])
    assert (same.value, same.lo, same.hi) == (2.0, 2.0, 2.0)
    one = stats.mean([3.0])
    assert one.value == 3.0 and one.lo is None and one.n == 1  # one item: no interval, not a zero-width one
    assert stats.mean([None, None]).value is None


def test_bootstrap_is_seeded_and_close_to_the_normal_interval():
    values = [((i * 37) % 11) / 10 for i in range(200)]
    a, b = stats.mean(values), stats.mean(values)
    assert a == b  # the same data always gives the same interval
    m = sum(values) / len(values)
    se = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))
    assert a.lo == pytest.approx(m - 1.96 * se, abs=0.25 * se) and a.hi == pytest.approx(m + 1.96 * se, abs=0.25 * se)


def test_paired_difference_uses_the_shared_items_only():
    got = stats.paired_difference({"p1": 1, "p2": 1, "p3": 0, "only_a": 1}, {"p1": 0, "p2": 1, "p3": 0, "only_b": 0})
    assert got.n == 3 and got.value == pytest.approx(1 / 3) and got.lo <= 0 <= got.hi
    assert stats.paired_difference({"a": 1}, {"b": 1}).value is None


def test_auroc_by_hand_pooled_and_within_prompts():
    # Prompt i: its correct response scores i + 1, its incorrect one i + 0.5. Within every prompt the correct one
    # wins (1.0); pooled, correct j beats incorrect i only when j >= i: 15 of 25 (0.6).
    scores = [s for i in range(5) for s in (i + 1, i + 0.5)] + [None]
    labels = [True, False] * 5 + [True]
    prompts = [f"p{i}" for i in range(5) for _ in range(2)] + ["p0"]
    pooled, within = stats.auroc(scores, labels, prompts), stats.auroc(scores, labels, prompts, within=True)
    assert (pooled.value, within.value) == (0.6, 1.0)
    assert pooled.classes == within.classes == (5, 5) and pooled.clusters == 5 and pooled.interval == "prompts"
    assert pooled.lo <= 0.6 <= pooled.hi
    # Every resample separates perfectly within prompts, but 5 against 5 is no certainty: the interval is at least
    # the Wilson interval over the smaller class, [0.57, 1].
    assert within.hi == 1.0 and within.lo == pytest.approx(stats.wilson(5, 5)[0])
    assert Estimate.from_json(pooled.to_json()) == pooled


def test_an_auroc_over_too_few_of_a_class_or_of_prompts_is_na_with_both_classes():
    one = stats.auroc(list(range(25)), [True] + [False] * 24, [f"p{i}" for i in range(25)])
    assert one.value is None and one.classes == (1, 24) and one.why == "1 correct / 24 incorrect: fewer than 5 of a class"
    two = stats.auroc(list(range(10)), [True, False] * 5, ["a"] * 5 + ["b"] * 5)
    assert two.value is None and two.why == "responses from 2 prompts: fewer than 5"
    assert stats.auroc([1, 2], [True, True], ["a", "b"]).why == "2 correct / 0 incorrect: fewer than 5 of a class"
    # Every correct response in one prompt of ten: a third of the resamples over prompts lack the class, and an
    # interval over the rest would be conditional (too narrow): n/a, saying so.
    scores = list(range(60))
    labels = [True] * 6 + [False] * 54
    prompts = ["p0"] * 6 + [f"p{1 + i % 9}" for i in range(54)]
    lone = stats.auroc(scores, labels, prompts)
    assert lone.value is None and "resamples over prompts" in lone.why
    assert stats.auroc([1.0] * 10, [True, False] * 5, [f"p{i}" for i in range(10)]).value == 0.5  # a constant signal


def test_intervals_over_prompts_cover_where_pair_level_ones_do_not():
    """22 prompts drawn from a population whose label precision varies by prompt (sd 0.25 around 0.6), 15 pairs
    each: the interval over prompts covers the population's precision about 95% of the time, Wilson's (pairs as if
    independent) far less. The prompts are a sample: another draw of 22 gives another precision."""
    rng = np.random.default_rng(7)
    truth = float(np.clip(rng.normal(0.6, 0.25, 1_000_000), 0, 1).mean())
    covered = {"prompts": 0, "wilson": 0}
    trials = 300
    for trial in range(trials):
        p = np.clip(rng.normal(0.6, 0.25, 22), 0, 1)
        items = [(i, bool(rng.random() < p[i])) for i in range(22) for _ in range(15)]
        est = stats.proportion_over_clusters(items, seed=trial)
        lo, hi = stats.wilson(est.k, est.n)
        covered["prompts"] += est.lo <= truth <= est.hi
        covered["wilson"] += lo <= truth <= hi
    assert covered["prompts"] / trials >= 0.88 and covered["wilson"] / trials <= 0.80, covered


def test_an_interval_over_prompts_is_never_narrower_than_wilsons():
    every = stats.proportion_over_clusters([(f"p{i}", True) for i in range(5)])  # 5 of 5: every resample is 1.0
    assert (every.lo, every.hi) == pytest.approx(stats.wilson(5, 5)) and every.lo < 0.6


def test_a_rate_over_too_few_prompts_is_na_and_keeps_its_counts():
    few = stats.proportion_over_clusters([("a", True), ("a", False), ("b", True), ("c", True)])
    assert few.value is None and (few.k, few.n, few.clusters) == (3, 4, 3) and few.why == "3/4 from 3 prompts: fewer than 5"
    assert stats.proportion_over_clusters([], why_empty="no decided pair").why == "no decided pair"


def test_random_drop_chance_matches_the_exact_distribution():
    labels = [True, True, True, False, False, None]
    exact = []
    for subset in itertools.combinations(labels, 3):
        decided = [x for x in subset if x is not None]
        if decided:
            exact.append(sum(decided) / len(decided))
    c = stats.compare([(f"p{i}", t, i < 3) for i, t in enumerate(labels)])
    assert c.chance == pytest.approx(sum(exact) / len(exact), abs=0.01)
    assert c.verdict == "not measurable" and "fewer than 5" in c.lift.why  # 3 kept pairs, from 3 prompts


def test_verdicts_read_the_lift_over_prompts():
    # 20 prompts of 5 pairs: 60 right, 40 wrong labels.
    truths = [True] * 60 + [False] * 40
    prompts = [f"p{i % 20}" for i in range(100)]

    def verdict(kept):
        return stats.compare(list(zip(prompts, truths, kept))).verdict

    assert verdict([i < 40 for i in range(100)]) == "helps"  # right labels only
    assert verdict([i >= 60 for i in range(100)]) == "hurts"  # wrong labels only
    assert verdict([i % 2 == 0 for i in range(100)]) == "no evidence"  # every other pair
    assert verdict([True] * 100) == "no drop"
    assert stats.compare([("a", None, True), ("b", None, False)]).verdict == "not measurable"
    assert stats.compare([]).verdict == "not applicable"


def test_a_filter_without_an_effect_rarely_helps_when_prompts_vary():
    """Prompts differ in precision (sd 0.25) and a filter keeps a random half of each prompt's pairs, more of some
    prompts than others: the verdict over prompts says 'helps' or 'hurts' about as often as a 5% test should."""
    rng = np.random.default_rng(11)
    claims = 0
    trials = 120
    for trial in range(trials):
        p = np.clip(rng.normal(0.6, 0.25, 22), 0, 1)
        keep_rate = rng.uniform(0.2, 0.8, 22)
        items = [(i, bool(rng.random() < p[i]), bool(rng.random() < keep_rate[i])) for i in range(22) for _ in range(15)]
        claims += stats.compare(items, seed=trial).verdict in ("helps", "hurts")
    assert claims / trials <= 0.10, claims
