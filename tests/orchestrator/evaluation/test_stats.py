import itertools
import math

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


def test_auroc_by_hand():
    # Positives 3 and 2 against negatives 1 and 2: 3>1, 3>2, 2>1 win, 2=2 counts half: 3.5 / 4.
    assert stats.auroc_point([3, 2], [1, 2]) == 0.875
    got = stats.auroc([3, 2, 1, 2, None], [True, True, False, False, True], ["a", "b", "a", "b", "c"])
    assert got.value == 0.875 and got.n == 4 and got.lo <= got.value <= got.hi
    assert stats.auroc([1, 2], [True, True], ["a", "b"]).why == "no incorrect responses"
    assert stats.auroc([1.0, 1.0, 1.0, 1.0], [True, False, True, False], "abcd").value == 0.5  # a constant judge


def test_random_drop_matches_the_exact_distribution():
    labels = [True, True, True, False, False, None]
    kept = 3
    exact = []
    for subset in itertools.combinations(labels, kept):
        decided = [x for x in subset if x is not None]
        if decided:
            exact.append(sum(decided) / len(decided))
    chance = stats.random_drop(labels, kept, observed=1.0)
    assert chance.precision == pytest.approx(sum(exact) / len(exact), abs=0.01)
    assert chance.p_at_least == pytest.approx(sum(p >= 1.0 for p in exact) / len(exact), abs=0.02)
    # A filter that kept exactly the right pairs of a large pool is far above chance; one that kept a random
    # subset is within the range; keeping everything is "no drop".
    pool = [True] * 60 + [False] * 40
    assert stats.verdict(stats.proportion(30, 30), stats.random_drop(pool, 30, 1.0)) == "helps"
    assert stats.verdict(stats.proportion(18, 30), stats.random_drop(pool, 30, 0.6)) == "no evidence"
    assert stats.verdict(stats.proportion(0, 30), stats.random_drop(pool, 30, 0.0)) == "hurts"
    assert stats.verdict(stats.proportion(60, 100), stats.random_drop(pool, 100, 0.6)) == "no drop"
    assert stats.verdict(stats.proportion(0, 0), stats.random_drop([None, None], 1, None)) == "not measurable"
    assert stats.verdict(stats.proportion(0, 0), stats.random_drop([], 0, None)) == "not applicable"
