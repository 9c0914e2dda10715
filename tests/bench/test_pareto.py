"""Pareto dominance and the non-dominated set used to mark the workload benchmark's configurations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seedance.bench.pareto import dominates, pareto_front


def test_dominates_needs_no_worse_everywhere_and_better_somewhere():
    assert dominates((1, 2, 3), (1, 2, 4))
    assert dominates((0, 0, 0), (1, 1, 1))
    assert not dominates((1, 2, 4), (1, 2, 3))
    assert not dominates((1, 5, 3), (2, 4, 3))  # a trade-off: neither wins
    assert not dominates((2, 4, 3), (1, 5, 3))
    assert not dominates((1, 2, 3), (1, 2, 3))  # identical points do not dominate each other


def test_dominates_with_infinity_and_rejects_nan_and_mixed_dimensions():
    assert dominates((1.0, 2.0), (math.inf, 2.0))
    assert not dominates((math.inf, 1.0), (math.inf, 1.0))
    with pytest.raises(ValueError):
        dominates((1.0, math.nan), (2.0, 2.0))
    with pytest.raises(ValueError):
        dominates((1, 2), (1, 2, 3))
    with pytest.raises(ValueError):
        pareto_front([(1, 2), (1, 2, 3)])


def test_front_of_a_known_matrix():
    # latency ms, memory MiB, 100 - completion %
    points = [
        (100, 700, 0),   # 0: fast, big, complete
        (300, 400, 0),   # 1: slower, small, complete
        (120, 720, 0),   # 2: dominated by 0
        (90, 900, 25),   # 3: fastest but drops a quarter: a trade-off, stays
        (300, 400, 0),   # 4: duplicate of 1: both stay
        (350, 450, 5),   # 5: dominated by 1
    ]
    assert pareto_front(points) == [0, 1, 3, 4]
    assert pareto_front([]) == []
    assert pareto_front([(5, 5, 5)]) == [0]


def test_one_axis_gives_the_minima():
    assert pareto_front([(3,), (1,), (2,), (1,)]) == [1, 3]


coords = st.integers(min_value=0, max_value=6)  # a small range, so ties and duplicates are common
point_lists = st.integers(min_value=1, max_value=3).flatmap(
    lambda d: st.lists(st.tuples(*[coords] * d), min_size=0, max_size=25))


@given(point_lists)
def test_front_properties(points):
    front = pareto_front(points)
    on_front = set(front)
    assert front == sorted(on_front)
    if points:
        assert front, "a non-empty set always has a non-dominated point"
    # No point (on the front or off it) dominates a front point.
    for i in front:
        assert not any(dominates(q, points[i]) for q in points)
    # Every point off the front is dominated by some front point (dominance is transitive and finite).
    for j, p in enumerate(points):
        if j not in on_front:
            assert any(dominates(points[i], p) for i in front)
    # Duplicates share their fate.
    for i, p in enumerate(points):
        for j, q in enumerate(points):
            if p == q:
                assert (i in on_front) == (j in on_front)


@given(point_lists)
def test_front_is_invariant_under_reordering(points):
    order = list(reversed(range(len(points))))
    shuffled = [points[k] for k in order]
    assert sorted(order[k] for k in pareto_front(shuffled)) == pareto_front(points)
