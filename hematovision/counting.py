"""How precisely a count of cells estimates a film's shares: the sampling error of a differential.

A differential counts a sample of a film's white cells, so a share read from it is uncertain by
how few cells were counted, however well each cell was named: 5 monocytes among 100 cells say
the film holds between about 2 and 11 %. Hematology reports this range from Rümke's tables
(Rümke, Blood Cells 1979; CLSI H20-A2), which are the exact binomial (Clopper-Pearson) limits
computed here. They cover the counting only, not a classifier's mistakes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

LEVEL = 0.95  # the tables' confidence level
_ITERATIONS = 60  # bisection steps: far below a displayed percent's precision


@lru_cache(maxsize=65536)  # pure in its arguments; a batch page or a simulation asks again
def share_range(count: int, total: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact binomial `level` confidence limits (low, high), as fractions, of the share of
    which `count` of `total` counted cells is a sample; (0, 1) when nothing was counted."""
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= count <= total:
        raise ValueError(f"count {count} is not between 0 and total {total}")
    tail = (1 - level) / 2
    cumulative = _cumulative(total)
    # P(X >= count | low) = tail, and P(X <= count | high) = tail; both tails are monotone in p.
    low = 0.0 if count == 0 else _solve(lambda p: 1 - cumulative(count - 1, p), tail)
    high = 1.0 if count == total else _solve(lambda p: cumulative(count, p), tail,
                                             decreasing=True)
    return low, high


def _cumulative(n: int):
    """P(X <= k) for X ~ Binomial(n, p), as a function of (k, p), in log space (no scipy)."""
    i = np.arange(n + 1)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log((n - i[1:] + 1) / i[1:]))])

    def at(k: int, p: float) -> float:
        if p <= 0:
            return 1.0
        if p >= 1:
            return 1.0 if k >= n else 0.0
        j = i[: k + 1]
        logs = log_choose[: k + 1] + j * np.log(p) + (n - j) * np.log1p(-p)
        top = logs.max()
        return float(min(1.0, np.exp(top) * np.exp(logs - top).sum()))
    return at


def _solve(tail_at, target: float, decreasing: bool = False) -> float:
    """The p in (0, 1) where the monotone `tail_at(p)` equals `target`, by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(_ITERATIONS):
        mid = (lo + hi) / 2
        if (tail_at(mid) > target) == decreasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
