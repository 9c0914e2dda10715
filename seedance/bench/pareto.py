"""Pareto dominance over incommensurable axes (every axis minimised).

The workload benchmark measures latency, memory and failure rate, which cannot be folded into one score
without choosing weights; the non-dominated set is what stays meaningful without them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _check(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"points of different dimension: {len(a)} and {len(b)}")
    if any(math.isnan(x) for x in (*a, *b)):
        raise ValueError("NaN has no order; drop or replace it before comparing")


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when a is at least as good as b on every axis and strictly better on one (minimisation).

    Identical points do not dominate each other, so duplicates stay on the front together.
    """
    _check(a, b)
    strictly = False
    for x, y in zip(a, b, strict=True):
        if x > y:
            return False
        if x < y:
            strictly = True
    return strictly


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates; O(n²), fine for a benchmark's few configs."""
    for p in points:
        _check(points[0], p)
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]
