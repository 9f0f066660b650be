"""A batch's differential against a manual count of the same film.

Before a lab relies on an automated differential, and from time to time after, it counts some
films by hand as well and compares the two (CLSI H20-A2, method comparison). Two counts of one
film differ by counting alone: 100 cells drawn twice from a film of 60 % neutrophils give shares
that differ by 10 points or more in about one pair of six (a test computes it). So a difference
is marked only where it lies beyond what counting both samples explains: Fisher's exact test of
the class's count against the other cells, in the batch and in the manual count (two-sided,
p < LEVEL). With one test per class, at most about one class in twenty is marked by chance on
films where the two methods agree (the exact test errs on the side of marking fewer); a
difference that recurs over films is what a lab looks for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hematovision.cells import OTHER_WHITE_CELL
from hematovision.differential import Differential

LEVEL = 0.05
# The most cells a manual count compared may hold, by the batch page's form and the command
# line alike: far above a manual differential (100 to 400 cells), far below a typing slip that
# would make every share meaningless.
MAX_MANUAL_CELLS = 10_000


@dataclass(frozen=True)
class ClassComparison:
    name: str
    count: int  # this batch's counted cells of the class
    percent: float  # of this batch's counted white cells, one decimal
    manual_count: int
    manual_percent: float  # of the manual count's white cells, one decimal
    difference: float  # percentage points, the batch's share minus the manual one, one decimal
    p_value: float  # Fisher's exact test, two-sided

    @property
    def beyond_counting_error(self) -> bool:
        return self.p_value < LEVEL


@dataclass(frozen=True)
class BesideComparison:
    """A class counted beside the differential (nucleated red cells), per 100 white cells, in
    the batch and in the manual count."""
    name: str
    count: int
    per_100_white: float  # one decimal
    manual_count: int
    manual_per_100_white: float  # one decimal
    difference: float  # the batch's minus the manual one, one decimal
    p_value: float  # Fisher's exact test of the class among the nucleated cells counted

    @property
    def beyond_counting_error(self) -> bool:
        return self.p_value < LEVEL


@dataclass(frozen=True)
class Comparison:
    # The batch's white-cell classes, in its order, then OTHER_WHITE_CELL where either count
    # holds any.
    classes: list[ClassComparison]
    white_cells: int  # this batch's counted white cells
    manual_white_cells: int  # the manual count's, those of classes the model lacks included
    # Of the manual count's white cells, those of classes the model does not name (basophils
    # for a four-class model, blasts): compared with the batch's cells a reviewer called so
    # (`cells.OTHER_WHITE_CELL`, none where none was).
    manual_other: int
    awaiting_review: int  # the batch's unidentified cells without a verdict
    # The classes of `manual_beside` the batch counts beside its differential, in its order.
    beside: list[BesideComparison] = field(default_factory=list)


def compare(counted: Differential, manual: Mapping[str, int], manual_other: int = 0,
            manual_beside: Mapping[str, int] | None = None) -> Comparison | None:
    """The batch's differential `counted` against a manual count of the same film (white cells
    by class; `manual_other`: white cells of classes the model does not name; `manual_beside`:
    nucleated red cells met while counting them, by class); None when either counted no white
    cell."""
    # A white cell of a type the model does not name, where a reviewer counted one (its own
    # share), is compared with the manual count's such cells.
    mine_of = {**manual, OTHER_WHITE_CELL: manual_other}
    manual_total = sum(manual.get(s.name, 0) for s in counted.shares
                       if s.name != OTHER_WHITE_CELL) + manual_other
    if not counted.white_cells or not manual_total:
        return None
    rows = []
    # The manual count's other white cells are compared whether or not a reviewer found any:
    # blasts the batch missed are what a lab most needs to see.
    names = [s.name for s in counted.shares]
    found = {s.name: (s.count, s.percent) for s in counted.shares}
    if manual_other and OTHER_WHITE_CELL not in found:
        names.append(OTHER_WHITE_CELL)
    for name in names:
        count, percent = found.get(name, (0, 0.0))
        mine = mine_of.get(name, 0)
        manual_percent = 100 * mine / manual_total
        batch_percent = 100 * count / counted.white_cells
        rows.append(ClassComparison(
            name, count, percent, mine, round(manual_percent, 1),
            round(batch_percent - manual_percent, 1),
            fisher_exact(count, counted.white_cells, mine, manual_total)))
    beside = []
    for other in counted.others:
        if other.name not in (manual_beside or {}):
            continue
        mine = manual_beside[other.name]
        per_100 = 100 * other.count / counted.white_cells
        manual_per_100 = 100 * mine / manual_total
        beside.append(BesideComparison(
            other.name, other.count, round(per_100, 1), mine, round(manual_per_100, 1),
            round(per_100 - manual_per_100, 1),
            # Tested as a share of the nucleated cells counted (white cells and these): per
            # 100 white cells is not a share of anything, and may pass 100.
            fisher_exact(other.count, other.count + counted.white_cells, mine,
                         mine + manual_total)))
    return Comparison(rows, counted.white_cells, manual_total, manual_other,
                      counted.awaiting_review, beside)


def comparison_json(found: Comparison) -> dict[str, Any]:
    """A comparison as the API returns it, beside the differential it compares (which holds the
    batch's white cells and cells awaiting review): the manual count's white cells (`other`:
    those of classes the model does not name), and per class the batch's count and share, the
    manual ones, their difference and its p-value; the classes counted beside the differential
    per 100 white cells, where any was compared."""
    def row(c: ClassComparison | BesideComparison, unit: str, figure: float,
            manual_figure: float) -> dict[str, Any]:
        return {"class": c.name, "count": c.count, unit: figure, "manual_count": c.manual_count,
                f"manual_{unit}": manual_figure, "difference": c.difference,
                "p_value": c.p_value, "beyond_counting_error": c.beyond_counting_error}

    return {"white_cells": found.manual_white_cells, "other": found.manual_other,
            "shares": [row(c, "percent", c.percent, c.manual_percent) for c in found.classes],
            **({"beside": [row(c, "per_100_white", c.per_100_white, c.manual_per_100_white)
                           for c in found.beside]} if found.beside else {})}


def fisher_exact(a: int, n1: int, b: int, n2: int) -> float:
    """The two-sided p-value of Fisher's exact test that `a` of `n1` and `b` of `n2` come from
    one share: the probability, given both totals and a + b, of every split of a + b cells
    between the two samples no more likely than the one observed."""
    if not (0 <= a <= n1 and 0 <= b <= n2):
        raise ValueError(f"counts {a} of {n1} and {b} of {n2} are not counts of their totals")
    k, n = a + b, n1 + n2
    if k in (0, n):
        return 1.0

    def log_p(x: int) -> float:  # hypergeometric: x of the k cells fall in the first sample
        return _log_comb(k, x) + _log_comb(n - k, n1 - x) - _log_comb(n, n1)

    observed = log_p(a)
    # A relative tolerance, so that splits exactly as likely as the observed one (ties, in
    # floating point a hair apart) count on both sides.
    splits = [log_p(x) for x in range(max(0, n1 - (n - k)), min(k, n1) + 1)]
    return min(1.0, sum(math.exp(p) for p in splits if p <= observed + 1e-7))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


@dataclass(frozen=True)
class FilmShares:
    """One film's shares of a class: the batch's and the manual count's, in percent, and the
    p-value of their difference (`ClassComparison`)."""
    batch_percent: float
    manual_percent: float
    p_value: float


@dataclass(frozen=True)
class ClassAgreement:
    """How the batch differential agrees with manual counts over many films, for one class:
    the Bland-Altman summary of the differences (batch minus manual, in points) and the line
    of the batch's share on the manual one, as a method comparison reports them."""
    name: str
    films: int
    mean_difference: float  # the bias, in points
    sd_difference: float | None  # None from one film
    limits: tuple[float, float] | None  # 95 % limits of agreement: mean +- 1.96 SD
    slope: float | None  # least squares, batch share on manual share; None from fewer than
    intercept: float | None  # three films, or where the manual shares do not vary
    r: float | None  # Pearson's correlation of the two shares, on the same films
    marked: int  # films where the difference was beyond counting error


def agreement_over_films(films: list[Mapping[str, FilmShares]], classes: list[str]
                         ) -> list[ClassAgreement]:
    """For each class (in `classes`' order) that some film compares, the agreement of the
    batch's shares with the manual ones over the films (`ClassAgreement`)."""
    found = []
    for name in classes:
        shares = [film[name] for film in films if name in film]
        if not shares:
            continue
        batch = [s.batch_percent for s in shares]
        by_hand = [s.manual_percent for s in shares]
        differences = [b - m for b, m in zip(batch, by_hand)]
        mean = sum(differences) / len(differences)
        sd = (math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
              if len(differences) > 1 else None)
        slope = intercept = r = None
        if len(shares) >= 3 and len(set(by_hand)) > 1:
            x_mean, y_mean = sum(by_hand) / len(by_hand), sum(batch) / len(batch)
            sxx = sum((x - x_mean) ** 2 for x in by_hand)
            syy = sum((y - y_mean) ** 2 for y in batch)
            sxy = sum((x - x_mean) * (y - y_mean) for x, y in zip(by_hand, batch))
            slope = sxy / sxx
            intercept = y_mean - slope * x_mean
            r = sxy / math.sqrt(sxx * syy) if syy else None
        found.append(ClassAgreement(
            name, len(shares), mean, sd,
            None if sd is None else (mean - 1.96 * sd, mean + 1.96 * sd),
            slope, intercept, r, sum(s.p_value < LEVEL for s in shares)))
    return found
