"""How sure is a preference label? Estimators used by the uncertainty filters (UPO-style).

Two sources: the judge's own samples (K verdicts per response) and
MC-dropout on the implicit reward (T stochastic passes of the policy),
summarised by ``flip``, ``bald`` or ``variance``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def p_chosen_beats_rejected(chosen: Sequence[float], rejected: Sequence[float]) -> float | None:
    """P(a judge score of chosen > one of rejected), ties counting 1/2, over all pairs of judge samples.

    This is the Mann-Whitney (AUC) estimate: with the K_c and K_r valid
    verdicts of the two responses, the fraction of the K_c * K_r score pairs
    that the chosen response wins. None when either side has no valid sample.
    """
    if not chosen or not rejected:
        return None
    wins = sum((c > r) + 0.5 * (c == r) for c in chosen for r in rejected)
    return wins / (len(chosen) * len(rejected))


def sigmoid(h: float) -> float:
    """1 / (1 + exp(-h)) without overflow for large |h|."""
    return 1 / (1 + math.exp(-h)) if h >= 0 else math.exp(h) / (1 + math.exp(h))


def _entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)


def bald(margins: Sequence[float]) -> float:
    """BALD mutual information of a pair's preference under T MC-dropout margins h_1..h_T.

    With p_t = sigmoid(h_t): BALD = H(mean_t p_t) - mean_t H(p_t), in nats,
    in [0, log 2]. High when the stochastic passes disagree confidently
    (epistemic uncertainty), low when they agree or are all unsure.
    """
    if not margins:
        raise ValueError("bald needs at least one margin")
    ps = [sigmoid(h) for h in margins]
    return max(0.0, _entropy(sum(ps) / len(ps)) - sum(_entropy(p) for p in ps) / len(ps))


def flip(margins: Sequence[float]) -> float:
    """How likely the pair's preference is to flip under the T MC-dropout margins h_1..h_T: Phi(-|mean| / sd).

    The normal estimate of P(sign of a pass's margin differs from the passes'
    mean sign), in [0, 0.5]: 0.5 when the passes' mean margin is 0 or lost
    in their spread, near 0 when it stands far beyond it. Free of the scale
    of the margins (beta, per-token or summed), so it moves with the gap
    relative to the noise, where BALD on small margins (sigmoid nearly
    linear) is about variance / 8 and ignores the gap. Needs T >= 2; with no
    spread it is 0, or 0.5 where every margin is 0.
    """
    if len(margins) < 2:
        raise ValueError("flip needs at least two margins")
    mean = sum(margins) / len(margins)
    sd = math.sqrt(sum((h - mean) ** 2 for h in margins) / (len(margins) - 1))
    if sd == 0:
        return 0.5 if mean == 0 else 0.0
    return 0.5 * math.erfc(abs(mean) / sd / math.sqrt(2))


def variance(margins: Sequence[float]) -> float:
    """Population variance of the T MC-dropout margins."""
    if not margins:
        raise ValueError("variance needs at least one margin")
    mean = sum(margins) / len(margins)
    return sum((h - mean) ** 2 for h in margins) / len(margins)
