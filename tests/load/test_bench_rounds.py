"""How the bench compares two sides measured in alternating rounds (bench/run.py): the
order of the rounds, which rounds are set side by side, and the median verdict that one
outlying round does not move (the size comparison and the metrics cost, issue 14 and 15)."""

from __future__ import annotations

import pytest

from bench.run import Row, alternating, median_ratio, ratios_side_by_side, rounds_together


def _round(name: str, cpu: float | None, p50: float = 10.0, count: int = 1000) -> Row:
    return Row(
        "rounds", name, "", "direct", "", count=count, rps=1000.0, p50_ms=p50, server_cpu_us=cpu
    )


def test_rounds_alternate_so_each_round_has_the_other_side_next_to_it() -> None:
    order = [f"{side}{n}" for n, side in alternating(("a", "b"), 4)]
    assert order == ["a0", "b0", "b1", "a1", "a2", "b2", "b3", "a3"]
    # Round k of one side is always next to round k of the other.
    for k in range(4):
        assert abs(order.index(f"a{k}") - order.index(f"b{k}")) == 1


def test_side_by_side_ratios_pair_round_k_with_round_k() -> None:
    over = [_round("a", cpu) for cpu in (110, 220, 330)]
    under = [_round("b", cpu) for cpu in (100, 200, 300)]
    assert ratios_side_by_side(over, under, lambda r: r.server_cpu_us) == pytest.approx(
        [1.1, 1.1, 1.1]
    )


def test_a_round_without_a_figure_is_left_out_not_counted_as_zero() -> None:
    over = [_round("a", 110), _round("a", None)]
    under = [_round("b", 100), _round("b", 100)]
    assert ratios_side_by_side(over, under, lambda r: r.server_cpu_us) == pytest.approx([1.1])
    assert median_ratio([]) is None


def test_one_outlying_round_moves_the_sum_but_not_the_median() -> None:
    """Six pairs of equal sides, one round of one side a third slower (as this machine
    does, bench/analysis.md): the summed figures differ by more than the 1.1 the size
    target allows, the median of the pairs does not move."""
    under = [_round("small", 300.0, p50=15.0) for _ in range(6)]
    over = [_round("large", 300.0, p50=15.0) for _ in range(6)]
    over[3] = _round("large", 300.0 * 1.6, p50=15.0 * 1.6)
    summed = (
        rounds_together("large", "x large", over).server_cpu_us
        / rounds_together("small", "x small", under).server_cpu_us
    )
    assert summed > 1.09
    ratios = ratios_side_by_side(over, under, lambda r: r.server_cpu_us)
    assert median_ratio(ratios) == pytest.approx(1.0)
    p50s = ratios_side_by_side(over, under, lambda r: r.p50_ms)
    assert median_ratio(p50s) == pytest.approx(1.0)


def test_of_two_rounds_the_verdict_is_their_mean() -> None:
    assert median_ratio([0.9, 1.3]) == pytest.approx(1.1)
