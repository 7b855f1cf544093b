"""Kendall tau-b and CREAM consistency: against scipy, by hand, and as properties."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import kendalltau

from orchestrator.rewards.consistency import consistency, kendall_tau_b
from orchestrator.rewards.uncertainty import bald, flip, p_chosen_beats_rejected, variance


@pytest.mark.parametrize("seed", range(200))
def test_tau_b_matches_scipy_on_random_rankings_with_ties(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 9)
    # Few distinct values so ties are frequent (judge means on a 0-5 scale are like this).
    x = [rng.choice([0, 1, 2, 2.5, 3, 4, 5][: rng.randint(2, 7)]) for _ in range(n)]
    y = [rng.choice([0, 1, 2, 3]) for _ in range(n)]
    ours = kendall_tau_b(x, y)
    ref = kendalltau(x, y, variant="b").statistic
    if ours is None:
        assert ref != ref  # scipy's nan: a constant ranking
    else:
        assert ours == pytest.approx(ref, abs=1e-12)


def test_consistency_by_hand():
    assert consistency([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]) == 1.0  # same order
    assert consistency([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == 0.0  # reversed
    # 3 pairs: (0,1) concordant, (0,2) concordant, (1,2) discordant: tau = 1/3.
    assert consistency([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx((1 / 3 + 1) / 2)
    # Undefined, not invented: a constant ranking, or fewer than two comparable responses.
    assert consistency([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) is None
    assert consistency([1.0, 2.0], [None, None]) is None
    assert consistency([1.0, None, 3.0], [2.0, 5.0, 1.0]) == 0.0  # the None response is left out


scores = st.lists(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0])), min_size=2, max_size=8)


@given(st.data())
def test_consistency_in_unit_interval_and_symmetric(data):
    x = data.draw(scores)
    y = data.draw(st.lists(st.one_of(st.none(), st.floats(-10, 10, allow_nan=False)), min_size=len(x), max_size=len(x)))
    c = consistency(x, y)
    assert c is None or 0.0 <= c <= 1.0
    assert c == consistency(y, x)


@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=8, unique=True))
def test_consistency_is_one_with_itself_and_zero_reversed(x):
    assert consistency(x, x) == pytest.approx(1.0)
    assert consistency(x, [-v for v in x]) == pytest.approx(0.0)


def test_p_correct_counts_ties_half():
    assert p_chosen_beats_rejected([3.0, 2.0], [2.0, 1.0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert p_chosen_beats_rejected([], [1.0]) is None


def test_bald_and_variance_by_hand():
    assert variance([1.0, 3.0]) == 1.0
    assert bald([2.0, 2.0, 2.0]) == pytest.approx(0.0, abs=1e-12)  # agreeing passes: no epistemic uncertainty
    # Two confident, opposite passes: H(0.5) - H(sigmoid(10)) ~ log 2.
    assert bald([10.0, -10.0]) == pytest.approx(0.693, abs=1e-3)
    assert bald([1.0, -1.0]) < bald([4.0, -4.0])


def test_flip_moves_with_the_gap_and_not_with_the_scale():
    # Mean 1, sample sd 1: Phi(-1) = 0.1587.
    assert flip([0.0, 1.0, 2.0]) == pytest.approx(0.158655, abs=1e-6)
    assert flip([-1.0, 1.0]) == 0.5 and flip([2.0, 2.0]) == 0.0 and flip([0.0, 0.0]) == 0.5
    noise = [0.3, -0.2, 0.1, -0.4, 0.25, -0.05, 0.15, -0.1]
    # The same spread around a growing gap: flip falls; BALD on margins this small (beta 0.1 per token) barely moves.
    gaps = [flip([g + e for e in noise]) for g in (0.0, 0.1, 0.3, 1.0)]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 0.4 and gaps[-1] < 1e-3
    small = [bald([0.01 * (g + e) for e in noise]) for g in (0.0, 1.0)]
    assert small[1] == pytest.approx(small[0], rel=0.05)
    # Free of the margins' scale (beta, per-token or summed): only the gap against the spread counts.
    assert flip([0.1 * (0.3 + e) for e in noise]) == pytest.approx(flip([10 * (0.3 + e) for e in noise]))
    with pytest.raises(ValueError):
        flip([1.0])


@given(st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=16))
def test_bald_bounded(margins):
    assert 0.0 <= bald(margins) <= 0.6931472
