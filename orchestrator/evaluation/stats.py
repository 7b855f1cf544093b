"""Numbers with their uncertainty: every rate and mean the project reports is an ``Estimate``.

- Proportions (accuracy, label precision, win/tie/loss, agreement, parse
  rates): Wilson 95% score interval, ``proportion(k, n)``.
- Means (judge scores, consistency): percentile bootstrap over the items,
  ``mean(values)``; paired differences (M(t) vs M0 accuracy on the same
  prompts): bootstrap over the shared items, ``paired_difference``.
- Ranking quality (judge AUROC at separating correct from incorrect
  responses): Mann-Whitney AUROC with a bootstrap over clusters (prompts:
  responses to one prompt are not independent), ``auroc``.
- A subset's label precision against chance: ``random_drop`` draws random
  subsets of the same size from the same candidates.

Every bootstrap is seeded (``SEED``, mixed with the caller's ``seed``), so the
same data always gives the same interval, on a resume too. A number that
cannot be measured (no items, one class missing) has value None and says why;
it is never printed as 0.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054
REPS = 2000
SEED = 20261202
SMALL_N = 5  # a point resting on fewer items is drawn hollow with its n, never joined by a line


@dataclass(frozen=True)
class Estimate:
    """A measured number: its value, the items it rests on (n) and a 95% interval.

    ``k``: successes, for proportions. ``lo``/``hi``: None where no interval
    can be given (fewer than 2 items for a bootstrap). ``why``: why ``value``
    is None.
    """

    value: float | None
    n: int
    lo: float | None = None
    hi: float | None = None
    k: int | None = None
    interval: str = "none"  # "wilson", "bootstrap", "none"
    why: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "n": self.n, "ci95": None if self.lo is None else [self.lo, self.hi],
                               "interval": self.interval}
        if self.k is not None:
            out["k"] = self.k
        if self.why is not None:
            out["why"] = self.why
        return out

    @staticmethod
    def from_json(obj: Any) -> "Estimate | None":
        """The Estimate of a metrics.json value (a bare number is one without n or interval); None for None."""
        if obj is None:
            return None
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            return Estimate(float(obj), 0)
        ci = obj.get("ci95") or (None, None)
        return Estimate(obj.get("value"), obj.get("n", 0), ci[0], ci[1], obj.get("k"), obj.get("interval", "none"),
                        obj.get("why"))


def unmeasured(n: int, why: str) -> Estimate:
    """A number that cannot be measured from ``n`` items, and why."""
    return Estimate(None, n, why=why)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (n > 0)."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 and k = n one bound is exactly 0 or 1; computed, it can land a rounding error off.
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def proportion(k: int, n: int, why_empty: str = "no items") -> Estimate:
    """k of n as an Estimate with its Wilson 95% interval; unmeasured when n = 0."""
    if n == 0:
        return unmeasured(0, why_empty)
    lo, hi = wilson(k, n)
    return Estimate(k / n, n, lo, hi, k=k, interval="wilson")


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([SEED, seed])


def _percentiles(samples: np.ndarray) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def mean(values: Sequence[float], seed: int = 0, why_empty: str = "no items") -> Estimate:
    """The mean of ``values`` with a seeded percentile-bootstrap 95% interval (none below 2 items)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return unmeasured(0, why_empty)
    value = float(x.mean())
    if x.size < 2:
        return Estimate(value, 1, interval="bootstrap")
    idx = _rng(seed).integers(0, x.size, size=(REPS, x.size))
    lo, hi = _percentiles(x[idx].mean(axis=1))
    return Estimate(value, int(x.size), lo, hi, interval="bootstrap")


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float], seed: int = 0) -> Estimate:
    """mean(a[key] - b[key]) over the keys both have, with a bootstrap 95% interval over those keys."""
    keys = sorted(set(a) & set(b), key=str)
    return mean([float(a[k]) - float(b[k]) for k in keys], seed, why_empty="no shared items")


def auroc_point(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(score of a positive > score of a negative), ties counting 1/2 (Mann-Whitney); None if a class is empty."""
    if not positive or not negative:
        return None
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def auroc(scores: Sequence[float], labels: Sequence[bool], clusters: Sequence[Hashable], seed: int = 0) -> Estimate:
    """AUROC of ``scores`` at separating True from False ``labels``, 95% interval by a bootstrap over ``clusters``.

    Items whose score is None are left out (n counts the rest). Unmeasured
    when either class is empty.
    """
    items = [(s, bool(y), c) for s, y, c in zip(scores, labels, clusters, strict=True) if s is not None]
    pos = [s for s, y, _ in items if y]
    neg = [s for s, y, _ in items if not y]
    value = auroc_point(pos, neg)
    if value is None:
        why = "no correct responses" if not pos else "no incorrect responses"
        return unmeasured(len(items), why if items else "no scored responses with a graded answer")
    groups: dict[Hashable, list[tuple[float, bool]]] = {}
    for s, y, c in items:
        groups.setdefault(c, []).append((s, y))
    members = list(groups.values())
    if len(members) < 2:
        return Estimate(value, len(items), interval="bootstrap")
    rng = _rng(seed)
    samples = np.empty(REPS)
    for r in range(REPS):
        drawn = [it for g in rng.integers(0, len(members), size=len(members)) for it in members[g]]
        a = auroc_point([s for s, y in drawn if y], [s for s, y in drawn if not y])
        samples[r] = np.nan if a is None else a
    lo, hi = _percentiles(samples)
    return Estimate(value, len(items), lo, hi, interval="bootstrap")


@dataclass(frozen=True)
class Baseline:
    """Label precision of random subsets of the candidates, of the size a filter kept.

    ``precision``: mean over the random subsets (the chance level);
    ``lo``/``hi``: its 2.5-97.5% range, against which the filter's precision
    is read; ``p_at_least``: share of random subsets at least as precise as
    the filter's (a one-sided permutation p-value).
    """

    size: int
    of: int  # candidates drawn from
    precision: float | None
    lo: float | None
    hi: float | None
    p_at_least: float | None

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "of": self.of, "precision": self.precision, "range95": None if self.lo is None else [self.lo, self.hi],
                "p_at_least": self.p_at_least}


def random_drop(labels: Sequence[bool | None], kept: int, observed: float | None, seed: int = 0) -> Baseline:
    """The precision of ``kept`` candidates drawn at random from ``labels``.

    ``labels``: per candidate pair, True (chosen is the correct one), False
    (rejected is), None (undecided: the truth does not separate the two).
    Subsets without a decided pair are left out of the statistics.
    """
    n = len(labels)
    right = sum(v is True for v in labels)
    wrong = sum(v is False for v in labels)
    if kept == 0 or n == 0 or right + wrong == 0:
        return Baseline(kept, n, None, None, None, None)
    # A random subset of `kept` candidates holds a hypergeometric number of decided pairs, and of those a
    # hypergeometric number of right ones: drawn directly, the same as shuffling the candidates, in O(REPS).
    rng = _rng(seed)
    decided = rng.hypergeometric(right + wrong, n - right - wrong, min(kept, n), size=REPS)
    ok = decided > 0
    if not ok.any():
        return Baseline(kept, n, None, None, None, None)
    prec = rng.hypergeometric(right, wrong, decided[ok]) / decided[ok]
    lo, hi = np.percentile(prec, [2.5, 97.5])
    p = None if observed is None else float((prec >= observed - 1e-12).mean())
    return Baseline(kept, n, float(prec.mean()), float(lo), float(hi), p)


def verdict(observed: Estimate, baseline: Baseline) -> str:
    """How a filter's kept precision reads against a random drop of the same size.

    'helps' / 'hurts': beyond the random drop's 95% range; 'no evidence':
    within it; 'not measurable': no decided kept pair or no baseline;
    'no drop': the filter kept every candidate (nothing to compare); 'not
    applicable': it had no candidate to judge (e.g. its signal is undefined).
    """
    if baseline.of == 0:
        return "not applicable"
    if baseline.size >= baseline.of:
        return "no drop"
    if observed.value is None or baseline.precision is None:
        return "not measurable"
    if observed.value > baseline.hi:
        return "helps"
    if observed.value < baseline.lo:
        return "hurts"
    return "no evidence"
