"""Latency statistics shared by the benchmarks."""

from __future__ import annotations

import numpy as np


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize_ms(values: list[float]) -> dict[str, float]:
    """mean / p50 / p99 of seconds, reported in milliseconds."""
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan")}
    arr = np.asarray(values) * 1000.0
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
    }


def percentiles_ms(seconds: list[float], qs: tuple[float, ...]) -> dict[str, float | None]:
    """mean and the given percentiles of seconds, in milliseconds (keys mean, p50, p99.9, …); None when empty."""
    if not seconds:
        return {"mean": None, **{f"p{q:g}": None for q in qs}}
    arr = np.asarray(seconds) * 1000.0
    return {"mean": float(arr.mean()), **{f"p{q:g}": float(np.percentile(arr, q)) for q in qs}}


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Arrival offsets (seconds) of n requests from a Poisson process of the given rate."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    return np.cumsum(gaps).tolist()
