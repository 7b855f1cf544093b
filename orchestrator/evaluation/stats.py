"""Numbers with their uncertainty: every rate and mean the project reports is an ``Estimate``.

- Proportions (accuracy, label precision, win/tie/loss, agreement, parse
  rates): Wilson 95% score interval, ``proportion(k, n)``.
- Means (judge scores, consistency): percentile bootstrap over the items,
  ``mean(values)``; paired differences (M(t) vs M0 accuracy on the same
  prompts): bootstrap over the shared items, ``paired_difference``.
- Rates over pairs (label precision): pairs of one prompt share its
  responses, so the interval is a bootstrap over prompts (the unit that was
  sampled), ``proportion_over_clusters``; n/a below ``MIN_CLUSTERS`` prompts.
- Ranking quality (AUROC at separating correct from incorrect responses):
  Mann-Whitney, pooled or within prompts, with a bootstrap over prompts,
  ``auroc``; n/a when the smaller class has fewer than ``MIN_CLASS`` members,
  and written with both classes (``classes``).
- A subset's label precision against chance: ``compare`` draws random
  subsets of the same size from the same candidates inside each resample
  of the prompts; a filter helps or hurts only when the lift's interval
  excludes 0.

Every bootstrap is seeded (``SEED``, mixed with the caller's ``seed``), so the
same data always gives the same interval, on a resume too. A number that
cannot be measured (no items, too few of a class or of prompts) has value
None and says why; it is never printed as 0 or as a confident value.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054
REPS = 2000
SEED = 20261202
SMALL_N = 5  # a point resting on fewer items is drawn hollow with its n, never joined by a line
MIN_CLASS = 5  # an AUROC whose smaller class has fewer members is n/a
MIN_CLUSTERS = 5  # a rate over items from fewer prompts is n/a: no interval over prompts can be had
MAX_UNDEFINED = 0.025  # a bootstrap whose statistic is undefined in more of its resamples gives no interval


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
    interval: str = "none"  # "wilson", "bootstrap" (over items), "prompts" (a bootstrap over prompts), "none"
    why: str | None = None
    clusters: int | None = None  # prompts the items came from, where the interval resamples them
    classes: tuple[int, int] | None = None  # (correct, incorrect) items of an AUROC

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "n": self.n, "ci95": None if self.lo is None else [self.lo, self.hi],
                               "interval": self.interval}
        for key, value in (("k", self.k), ("why", self.why), ("prompts", self.clusters), ("classes", self.classes)):
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @staticmethod
    def from_json(obj: Any) -> "Estimate | None":
        """The Estimate of a metrics.json value (a bare number is one without n or interval); None for None."""
        if obj is None:
            return None
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            return Estimate(float(obj), 0)
        ci = obj.get("ci95") or (None, None)
        classes = obj.get("classes")
        return Estimate(obj.get("value"), obj.get("n", 0), ci[0], ci[1], obj.get("k"), obj.get("interval", "none"),
                        obj.get("why"), obj.get("prompts"), None if classes is None else (classes[0], classes[1]))


def unmeasured(n: int, why: str) -> Estimate:
    """A number that cannot be measured from ``n`` items, and why."""
    return Estimate(None, n, why=why)


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (n > 0; k may be fractional, e.g. AUROC x n)."""
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


def _clusters(clusters: Sequence[Hashable]) -> tuple[list[Hashable], np.ndarray]:
    """The distinct clusters in first-seen order, and each item's cluster index."""
    index: dict[Hashable, int] = {}
    idx = np.asarray([index.setdefault(c, len(index)) for c in clusters], dtype=int)
    return list(index), idx


CHUNK_CELLS = 2_000_000  # counts held at a time (16 MB): REPS x clusters at once would take GBs for 100,000 prompts


def _resample_chunks(clusters: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap resamples over clusters, a chunk at a time: how often each cluster is drawn in each resample
    (``clusters`` draws with replacement, as counts; ``REPS`` resamples in all)."""
    rng = _rng(seed)
    chunk = max(1, min(REPS, CHUNK_CELLS // clusters))
    for start in range(0, REPS, chunk):
        # ``clusters`` uniform draws per resample, counted per cluster: the multinomial, 20x faster than numpy's
        # multinomial (one binomial per cluster) at thousands of clusters.
        rows = min(chunk, REPS - start)
        draws = rng.integers(0, clusters, size=(rows, clusters)) + clusters * np.arange(rows)[:, None]
        yield np.bincount(draws.ravel(), minlength=rows * clusters).reshape(rows, clusters).astype(float)


def _resampled_sums(per_cluster: np.ndarray, seed: int) -> np.ndarray:
    """REPS x k: the column sums of ``per_cluster`` (clusters x k) over each bootstrap resample of the clusters."""
    return np.vstack([counts @ per_cluster for counts in _resample_chunks(per_cluster.shape[0], seed)])


def _few(n: int, what: str, unit: str = "prompt") -> str:
    """Why a rate over items from ``n`` < MIN_CLUSTERS clusters is n/a; ``unit``: what a cluster is, singular."""
    head, _, tail = unit.partition(" ")
    return f"{what} from {n} {head}{'s' if n != 1 else ''}{' ' + tail if tail else ''}: fewer than {MIN_CLUSTERS}"


def _bootstrap(samples: np.ndarray, what: str) -> tuple[float, float] | str:
    """The percentile 95% interval of bootstrap ``samples`` (NaN: the statistic was undefined in that resample), or
    why there is none: more than 2.5% of resamples without it would make the interval conditional (too narrow)."""
    undefined = float(np.isnan(samples).mean())
    if undefined > MAX_UNDEFINED:
        return f"{undefined:.0%} of resamples over prompts hold no {what}: too few prompts carry it"
    return _percentiles(samples)


def proportion_over_clusters(items: Sequence[tuple[Hashable, bool]], seed: int = 0,
                             why_empty: str = "no items") -> Estimate:
    """The share of True items, with a 95% interval by a bootstrap over their clusters (the prompts they came from).

    Items of one cluster are not independent (pairs of one prompt share its
    responses), so the interval resamples clusters, not items. Unmeasured
    (value None, k and n kept) when the items come from fewer than
    ``MIN_CLUSTERS`` clusters.
    """
    if not items:
        return unmeasured(0, why_empty)
    names, idx = _clusters([c for c, _ in items])
    k = int(sum(bool(v) for _, v in items))
    n = len(items)
    if len(names) < MIN_CLUSTERS:
        return Estimate(None, n, k=k, clusters=len(names), why=_few(len(names), f"{k}/{n}"))
    hits = np.bincount(idx, weights=[float(bool(v)) for _, v in items], minlength=len(names))
    sizes = np.bincount(idx, minlength=len(names)).astype(float)
    sums = _resampled_sums(np.column_stack([hits, sizes]), seed)
    lo, hi = _widened(_percentiles(sums[:, 0] / sums[:, 1]), wilson(k, n))
    return Estimate(k / n, n, lo, hi, k=k, interval="prompts", clusters=len(names))


def _widened(boot: tuple[float, float], floor: tuple[float, float]) -> tuple[float, float]:
    """A bootstrap interval widened to at least ``floor``: where every resample agrees (5 of 5 right, an AUROC of
    1) a percentile bootstrap has no width at all, which would read as certainty."""
    return min(boot[0], floor[0]), max(boot[1], floor[1])


def auroc(scores: Sequence[float | None], labels: Sequence[bool], clusters: Sequence[Hashable], seed: int = 0,
          within: bool = False) -> Estimate:
    """AUROC of ``scores`` at separating True (correct) from False ``labels``, 95% interval by a bootstrap over
    ``clusters`` (prompts: responses to one prompt are not independent).

    Pooled (``within`` False): every correct response against every
    incorrect one. Within prompts (``within`` True): only responses of the same
    prompt are compared, over the prompts that have both classes, so a
    signal that tracks the prompt's difficulty (which also drives
    correctness) gains nothing from it. Items whose score is None are left
    out. Unmeasured (n/a, with the classes and the reason) when the smaller
    class has fewer than ``MIN_CLASS`` members or the items come from fewer
    than ``MIN_CLUSTERS`` prompts (for ``within``: prompts with both
    classes), or when resamples lacking a class would make the interval
    conditional.
    """
    items = [(float(s), bool(y), c) for s, y, c in zip(scores, labels, clusters, strict=True) if s is not None]
    if within:
        has = {c: set() for _, _, c in items}
        for _, y, c in items:
            has[c].add(y)
        items = [it for it in items if len(has[it[2]]) == 2]
    pos = sum(y for _, y, _ in items)
    neg = len(items) - pos
    classes = (pos, neg)
    if not items:
        why = "no prompt with both correct and incorrect responses" if within else "no scored responses with a graded answer"
        return Estimate(None, 0, classes=classes, why=why)
    names, idx = _clusters([c for _, _, c in items])
    if min(pos, neg) < MIN_CLASS:
        return Estimate(None, len(items), classes=classes, clusters=len(names),
                        why=f"{pos} correct / {neg} incorrect: fewer than {MIN_CLASS} of a class")
    if len(names) < MIN_CLUSTERS:
        return Estimate(None, len(items), classes=classes, clusters=len(names),
                        why=_few(len(names), "responses", "prompt with both classes" if within else "prompt"))
    score = np.asarray([s for s, _, _ in items])
    label = np.asarray([y for _, y, _ in items])
    npos = np.bincount(idx[label], minlength=len(names)).astype(float)
    nneg = np.bincount(idx[~label], minlength=len(names)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        if within:
            # Per prompt, the Mann-Whitney wins of its correct responses over its incorrect ones; a resample that
            # draws a prompt m times holds m copies of them.
            wins = np.zeros(len(names))
            for c in range(len(names)):
                mine = idx == c
                wins[c] = _wins(score[mine & label], score[mine & ~label])
            value = float(wins.sum() / (npos @ nneg))
            sums = _resampled_sums(np.column_stack([wins, npos * nneg]), seed)
            samples = sums[:, 0] / sums[:, 1]
        else:
            value = float(_wins(score[label], score[~label]) / (pos * neg))
            samples = _pooled_resamples(score, label, idx, _resample_chunks(len(names), seed))
    interval = _bootstrap(samples, "correct or no incorrect response")
    if isinstance(interval, str):
        return Estimate(None, len(items), classes=classes, clusters=len(names), why=interval)
    # Floor: a Wilson interval over the smaller class, conservative for an AUROC (its variance is at most
    # AUROC (1 - AUROC) / min(correct, incorrect)).
    smaller = min(pos, neg)
    lo, hi = _widened(interval, wilson(value * smaller, smaller))
    return Estimate(value, len(items), lo, hi, interval="prompts", classes=classes, clusters=len(names))


def _wins(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney wins of ``pos`` over ``neg`` (ties count 1/2), by ranks: O((P + N) log(P + N))."""
    if pos.size == 0 or neg.size == 0:
        return 0.0
    below = np.searchsorted(np.sort(neg), pos, side="left")
    at_or_below = np.searchsorted(np.sort(neg), pos, side="right")
    return float(below.sum() + 0.5 * (at_or_below - below).sum())


def _pooled_resamples(score: np.ndarray, label: np.ndarray, idx: np.ndarray, chunks: Iterator[np.ndarray]) -> np.ndarray:
    """The pooled AUROC in each resample over clusters (``chunks`` of resamples x clusters counts), NaN where a class
    is missing.

    An item of a cluster drawn m times counts m times: per score level, the
    weight of correct items times the weight of incorrect ones below it
    (plus half of those level with it), in O(items) per resample.
    """
    levels, level = np.unique(score, return_inverse=True)
    out = []
    for m in (row for counts in chunks for row in counts):
        w = m[idx]
        pw = np.bincount(level[label], w[label], minlength=levels.size)
        nw = np.bincount(level[~label], w[~label], minlength=levels.size)
        below = np.cumsum(nw) - nw
        total = pw.sum() * nw.sum()
        out.append((pw @ (below + 0.5 * nw)) / total if total > 0 else np.nan)
    return np.asarray(out)


@dataclass(frozen=True)
class Comparison:
    """A subset's label precision against random subsets of the same size from the same candidates.

    ``precision``: the subset's (over prompts). ``chance``: the mean
    precision of random subsets of its size; ``lo``/``hi``: their 2.5-97.5%
    range over resamples of the prompts (the prompts and the draw both
    vary). ``lift``: precision minus the random subset's in the same
    resample of prompts, with its interval. ``verdict``: see ``compare``.
    """

    size: int
    of: int
    precision: Estimate
    chance: float | None
    lo: float | None
    hi: float | None
    lift: Estimate
    verdict: str

    def random_drop_json(self) -> dict[str, Any]:
        return {"size": self.size, "of": self.of, "precision": self.chance,
                "range95": None if self.lo is None else [self.lo, self.hi]}


def compare(items: Sequence[tuple[Hashable, bool | None, bool]], seed: int = 0) -> Comparison:
    """The kept candidates' label precision against a random drop of the same size, with inference over prompts.

    ``items``: per candidate pair, (prompt, truth, kept): truth True when
    the chosen response is the correct one, False when the rejected one is,
    None when undecided. Each of ``REPS`` resamples draws the prompts with
    replacement, then the kept pairs' precision there and that of a random
    subset of as many of its candidates (hypergeometric, as shuffling the
    candidates would); their difference is the lift. ``verdict``: 'helps' /
    'hurts' when the lift's 95% interval lies above / below 0; 'no
    evidence' when it covers 0; 'not measurable' when the kept decided pairs
    come from fewer than ``MIN_CLUSTERS`` prompts (or too many resamples hold
    none); 'no drop' when every candidate was kept; 'not applicable' when
    there was no candidate.
    """
    kept_items = [(c, t) for c, t, k in items if k and t is not None]
    precision = proportion_over_clusters(kept_items, seed, "no decided pair")
    size, of = sum(k for _, _, k in items), len(items)
    decided = [t for _, t, _ in items if t is not None]

    def result(verdict: str, lift: Estimate, chance: float | None = None, lo: float | None = None,
               hi: float | None = None) -> Comparison:
        return Comparison(size, of, precision, chance, lo, hi, lift, verdict)

    if of == 0:
        return result("not applicable", unmeasured(0, "no candidate pair"))
    if size >= of:
        return result("no drop", unmeasured(0, "every candidate kept"))
    if not decided or size == 0:
        return result("not measurable", unmeasured(0, "no decided pair"))
    rng = _rng(seed + 1)
    right, wrong = sum(decided), len(decided) - sum(decided)
    # Chance on the data as observed: random subsets of `size` candidates, those holding a decided pair.
    drawn = rng.hypergeometric(right + wrong, of - right - wrong, size, size=REPS)
    chance = float((rng.hypergeometric(right, wrong, drawn[drawn > 0]) / drawn[drawn > 0]).mean()) if (drawn > 0).any() else None
    if precision.value is None or chance is None:
        return result("not measurable", unmeasured(len(kept_items), precision.why or "no random subset holds a decided pair"),
                      chance)
    names, idx = _clusters([c for c, _, _ in items])
    columns = np.zeros((len(names), 5))  # per prompt: candidates, decided, right, kept, kept right
    for (_, t, k), i in zip(items, idx):
        columns[i] += (1, t is not None, t is True, k, k and t is True)
    kept_decided = np.bincount(idx, weights=[float(k and t is not None) for _, t, k in items], minlength=len(names))
    sums = _resampled_sums(np.column_stack([columns, kept_decided]), seed)
    n, d, r, kn, kr, kd = np.rint(sums).T.astype(np.int64)
    sub = rng.hypergeometric(d, n - d, kn)
    sub_right = rng.hypergeometric(r, d - r, sub)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.where(kd > 0, kr / kd, np.nan)
        random = np.where(sub > 0, sub_right / sub, np.nan)
    lift_interval = _bootstrap(observed - random, "decided kept pair or random subset")
    range_interval = _bootstrap(random, "random subset with a decided pair")
    if isinstance(lift_interval, str) or isinstance(range_interval, str):
        why = lift_interval if isinstance(lift_interval, str) else range_interval
        return result("not measurable", unmeasured(len(kept_items), why), chance)
    lift = Estimate(precision.value - chance, len(kept_items), *lift_interval, interval="prompts",
                    clusters=precision.clusters)
    verdict = "helps" if lift.lo > 0 else "hurts" if lift.hi < 0 else "no evidence"
    return result(verdict, lift, chance, *range_interval)
