"""hematovision.comparison: a batch's differential against a manual count of the same film,
each class's difference marked only beyond counting error (Fisher's exact test)."""

from math import comb

import numpy as np
import pytest
from scipy import stats

from hematovision.comparison import LEVEL, compare, comparison_json, fisher_exact
from hematovision.differential import differential
from tests.test_differential import film

WBC4 = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


@pytest.mark.parametrize("a, n1, b, n2, expected", [
    (3, 4, 1, 4, 34 / 70),  # Fisher's lady tasting tea: 34 of the 70 ways are as extreme
    (0, 100, 0, 100, 1.0),  # no cell of the class in either count
    (100, 100, 100, 100, 1.0),
    (60, 100, 60, 100, 1.0),
])
def test_fisher_s_exact_test_on_tables_whose_answer_is_known(a, n1, b, n2, expected):
    assert fisher_exact(a, n1, b, n2) == pytest.approx(expected, rel=1e-9)


def test_fisher_s_exact_test_agrees_with_scipy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n1, n2 = (int(n) for n in rng.integers(1, 400, 2))
        a, b = int(rng.integers(0, n1 + 1)), int(rng.integers(0, n2 + 1))
        expected = stats.fisher_exact([[a, n1 - a], [b, n2 - b]]).pvalue
        assert fisher_exact(a, n1, b, n2) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    with pytest.raises(ValueError, match="not counts of their totals"):
        fisher_exact(5, 4, 1, 4)


def test_two_counts_of_100_cells_differ_by_10_points_in_about_one_pair_of_six():
    # The module's example of what counting alone does: a film of 60 % neutrophils counted
    # twice, 100 cells each time.
    p = [comb(100, k) * 0.6**k * 0.4 ** (100 - k) for k in range(101)]
    apart = sum(p[i] * p[j] for i in range(101) for j in range(101) if abs(i - j) >= 10)
    assert round(1 / apart) == 6  # 0.170


def test_each_class_against_the_manual_count_of_the_same_film():
    counted = differential(
        film({"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 4}, WBC4), WBC4)
    found = compare(counted, {"neutrophil": 35, "lymphocyte": 55, "monocyte": 5,
                              "eosinophil": 3}, manual_other=2)  # 2 basophils: not in wbc4
    assert (found.white_cells, found.manual_white_cells, found.manual_other) == (100, 100, 2)
    rows = {row.name: row for row in found.classes}
    assert list(rows) == [*WBC4, "other-white-cell"]  # the basophils, against none
    neutrophils = rows["neutrophil"]
    assert (neutrophils.count, neutrophils.percent, neutrophils.manual_count,
            neutrophils.manual_percent, neutrophils.difference) == (60, 60.0, 35, 35.0, 25.0)
    assert neutrophils.p_value < 0.001 and neutrophils.beyond_counting_error
    assert rows["lymphocyte"].difference == -25.0 and rows["lymphocyte"].beyond_counting_error
    # 6 against 5 monocytes in 100: counting explains it.
    assert rows["monocyte"].difference == 1.0 and not rows["monocyte"].beyond_counting_error
    assert rows["monocyte"].p_value > LEVEL


def test_shares_of_different_totals_are_compared_as_shares():
    counted = differential(film({"neutrophil": 30, "lymphocyte": 20}, WBC4), WBC4)  # 50 cells
    found = compare(counted, {"neutrophil": 120, "lymphocyte": 80})  # 200 cells by hand
    assert [(r.percent, r.manual_percent, r.difference, r.beyond_counting_error)
            for r in found.classes if r.count] == [(40.0, 40.0, 0.0, False),
                                                    (60.0, 60.0, 0.0, False)]


def test_without_a_white_cell_on_either_side_there_is_nothing_to_compare():
    counted = differential(film({"neutrophil": 3}, WBC4), WBC4)
    assert compare(counted, {}) is None
    assert compare(counted, {"neutrophil": 0}, manual_other=0) is None
    assert compare(differential([], WBC4), {"neutrophil": 5}) is None
    assert compare(counted, {}, manual_other=4) is not None  # only cells the model lacks


def test_agreement_over_films_is_the_bland_altman_summary_and_the_least_squares_line():
    from hematovision.comparison import FilmShares, agreement_over_films

    batch, manual = [62.0, 55.0, 70.0, 48.0], [60.0, 58.0, 66.0, 50.0]
    films = [{"neutrophil": FilmShares(b, m, p)} for b, m, p in zip(batch, manual,
                                                                   [0.5, 0.01, 0.3, 0.9])]
    films[0]["monocyte"] = FilmShares(5.0, 4.0, 0.7)  # one film compares monocytes
    neutrophils, monocytes = agreement_over_films(films, WBC4[::-1])  # the order given
    differences = np.subtract(batch, manual)
    assert (neutrophils.name, neutrophils.films, neutrophils.marked) == ("neutrophil", 4, 1)
    assert neutrophils.mean_difference == pytest.approx(differences.mean())
    assert neutrophils.sd_difference == pytest.approx(differences.std(ddof=1))
    spread = 1.96 * differences.std(ddof=1)
    assert neutrophils.limits == pytest.approx((differences.mean() - spread,
                                                differences.mean() + spread))
    slope, intercept = np.polyfit(manual, batch, 1)
    assert (neutrophils.slope, neutrophils.intercept) == pytest.approx((slope, intercept))
    assert neutrophils.r == pytest.approx(np.corrcoef(manual, batch)[0, 1])
    assert (monocytes.name, monocytes.films, monocytes.mean_difference) == ("monocyte", 1, 1.0)
    assert (monocytes.sd_difference, monocytes.limits, monocytes.slope, monocytes.r) == (
        None, None, None, None)


def test_nucleated_red_cells_are_compared_per_100_white_cells_among_the_nucleated_cells():
    pbc8 = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
            "neutrophil", "platelet"]
    counted = differential(film({"neutrophil": 40, "lymphocyte": 10, "erythroblast": 5,
                                 "platelet": 3}, pbc8), pbc8)
    found = compare(counted, {"neutrophil": 150, "lymphocyte": 50}, manual_beside={
        "erythroblast": 4})
    [row] = found.beside  # platelets are not compared: none was given
    assert (row.name, row.count, row.per_100_white, row.manual_count,
            row.manual_per_100_white, row.difference) == ("erythroblast", 5, 10.0, 4, 2.0, 8.0)
    assert row.p_value == pytest.approx(stats.fisher_exact([[5, 50], [4, 200]]).pvalue)
    assert compare(counted, {"neutrophil": 150}).beside == []


def test_the_api_form_has_each_class_both_ways_and_the_cells_beside_where_compared():
    pbc8 = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
            "neutrophil", "platelet"]
    counted = differential(film({"neutrophil": 40, "lymphocyte": 10, "erythroblast": 5}, pbc8),
                           pbc8)
    found = compare(counted, {"neutrophil": 150, "lymphocyte": 45}, manual_other=5,
                    manual_beside={"erythroblast": 4})
    out = comparison_json(found)
    assert (out["white_cells"], out["other"]) == (200, 5)
    neutrophils = next(s for s in out["shares"] if s["class"] == "neutrophil")
    row = next(r for r in found.classes if r.name == "neutrophil")
    assert neutrophils == {"class": "neutrophil", "count": 40, "percent": 80.0,
                           "manual_count": 150, "manual_percent": 75.0, "difference": 5.0,
                           "p_value": row.p_value, "beyond_counting_error": False}
    # Every class of the batch, then the manual count's other white cells against none.
    assert [s["class"] for s in out["shares"]] == [*(s.name for s in counted.shares),
                                                   "other-white-cell"]
    assert out["beside"] == [{"class": "erythroblast", "count": 5, "per_100_white": 10.0,
                              "manual_count": 4, "manual_per_100_white": 2.0,
                              "difference": 8.0, "p_value": found.beside[0].p_value,
                              "beyond_counting_error": found.beside[0].p_value < LEVEL}]
    assert "beside" not in comparison_json(compare(counted, {"neutrophil": 150}))


def test_other_white_cells_counted_on_review_are_compared_with_the_manual_count_s():
    from hematovision.cells import OTHER_WHITE_CELL

    cells = film({"neutrophil": 58, "lymphocyte": 30, "monocyte": 6, "eosinophil": 4}, WBC4)
    cells += [{**c, "review": {"label": OTHER_WHITE_CELL, "at": 0.0}}
              for c in film({"neutrophil": 2}, WBC4)]  # two blasts, read as neutrophils
    found = compare(differential(cells, WBC4), {"neutrophil": 60, "lymphocyte": 30,
                                                "monocyte": 5, "eosinophil": 3},
                    manual_other=2)
    rows = {row.name: row for row in found.classes}
    assert list(rows) == [*WBC4, OTHER_WHITE_CELL]
    assert (rows[OTHER_WHITE_CELL].count, rows[OTHER_WHITE_CELL].manual_count,
            rows[OTHER_WHITE_CELL].difference) == (2, 2, 0.0)
    assert found.manual_white_cells == 100  # the manual count's own two, counted once


def test_other_white_cells_of_the_manual_count_are_compared_though_the_batch_found_none():
    """Blasts the batch missed (read as neutrophils, not reviewed as other white cells) are a
    row of their own against none, not a silent share of the neutrophils' difference."""
    from hematovision.cells import OTHER_WHITE_CELL

    counted = differential(film({"neutrophil": 60, "lymphocyte": 40}, WBC4), WBC4)
    found = compare(counted, {"neutrophil": 50, "lymphocyte": 40}, manual_other=10)
    other = found.classes[-1]
    assert (other.name, other.count, other.manual_count, other.difference) == (
        OTHER_WHITE_CELL, 0, 10, -10.0)
    assert other.beyond_counting_error
    assert compare(counted, {"neutrophil": 50, "lymphocyte": 50}).classes[-1].name == (
        "neutrophil")  # none in either count: no such row
