"""hematovision.counting: the exact binomial limits of a differential's shares (Rümke's tables)."""

import pytest

from hematovision.counting import share_range


@pytest.mark.parametrize("count, total, low, high", [
    (50, 100, 0.3983, 0.6017),  # Rümke's table for 100 cells: 50 % -> 40-60 %
    (10, 100, 0.0490, 0.1762),  # 10 % -> 5-18 %
    (5, 100, 0.0164, 0.1128),  # 5 % -> 2-11 %
    (20, 200, 0.0622, 0.1502),  # 10 % of 200 -> 6-15 %
    (0, 10, 0.0, 0.3085),  # none seen: only the upper limit moves
    (10, 10, 0.6915, 1.0),  # all seen: only the lower limit moves
    (1, 1, 0.025, 1.0),
])
def test_the_limits_are_the_exact_binomial_ones(count, total, low, high):
    assert share_range(count, total) == pytest.approx((low, high), abs=1e-4)


def test_more_cells_counted_narrow_the_range_and_it_always_holds_the_share():
    widths = []
    for total in (10, 100, 1000, 16000):
        low, high = share_range(total // 4, total)
        assert low < 0.25 < high
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.02


def test_a_lower_level_gives_a_narrower_range():
    assert share_range(10, 100, level=0.8)[1] - share_range(10, 100, level=0.8)[0] < (
        share_range(10, 100)[1] - share_range(10, 100)[0])


def test_nothing_counted_says_nothing_and_an_impossible_count_is_refused():
    assert share_range(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="not between 0 and total"):
        share_range(5, 4)
