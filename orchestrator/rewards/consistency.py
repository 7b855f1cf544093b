"""Cross-iteration consistency (CREAM): do the current and the previous model rank a prompt's responses alike?

Per prompt, the responses are ranked by the current model's reward and by the
previous model's reward; Kendall's tau-b between the two rankings gives the
consistency ``C = (tau_b + 1) / 2`` in [0, 1] (1 = same order, 0 = reversed).
C is undefined (None) when either ranking is constant or fewer than two
responses have both rewards: the run says so rather than inventing a value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two equally long score lists (ties handled); None when undefined.

    tau_b = (n_c - n_d) / sqrt((n_0 - n_x) (n_0 - n_y)) over all n_0 = n(n-1)/2
    index pairs, with n_x / n_y the pairs tied in x / in y. O(n^2): a prompt
    has a handful of responses.
    """
    if len(x) != len(y):
        raise ValueError(f"rankings differ in length: {len(x)} vs {len(y)}")
    n = len(x)
    concordant = discordant = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0:
                tied_x += 1
            if dy == 0:
                tied_y += 1
            if dx != 0 and dy != 0:
                if (dx > 0) == (dy > 0):
                    concordant += 1
                else:
                    discordant += 1
    n0 = n * (n - 1) // 2
    denom = (n0 - tied_x) * (n0 - tied_y)
    if denom == 0:
        return None
    return (concordant - discordant) / math.sqrt(denom)


def consistency(current: Sequence[float | None], previous: Sequence[float | None]) -> float | None:
    """C = (tau_b + 1) / 2 over the responses that have both rewards; None when undefined."""
    both = [(c, p) for c, p in zip(current, previous, strict=True) if c is not None and p is not None]
    tau = kendall_tau_b([c for c, _ in both], [p for _, p in both]) if len(both) >= 2 else None
    return None if tau is None else (tau + 1) / 2
