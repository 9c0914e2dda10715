"""The loop-only histogram and counter expose what prometheus_client's own Histogram and Counter expose for
the same observations (the oracle), bucket edges included."""

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from seedance.observability.loop_metrics import LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def samples(registry: CollectorRegistry, prefix: str) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if line.startswith(prefix) and "_created" not in line]


def test_the_histogram_matches_prometheus_client():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("h_seconds", "doc", "transport", ("ws", "sse"), BUCKETS)
    ours.register(loop)
    reference = Histogram("h_seconds", "doc", ["transport"], buckets=BUCKETS, registry=theirs)
    reference.labels("ws"), reference.labels("sse")
    rng = random.Random(7)
    values = [rng.expovariate(50) for _ in range(500)] + list(BUCKETS) + [0.0, 3.0, 1e9]  # edges count as <=
    for i, v in enumerate(values):
        label = "ws" if i % 3 else "sse"
        loop.observe(label, v)
        reference.labels(label).observe(v)
    assert samples(ours, "h_seconds") == samples(theirs, "h_seconds")


def test_the_counter_matches_prometheus_client():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("tokens", "doc", "transport", ("ws", "sse", "polling"))
    ours.register(loop)
    reference = Counter("tokens", "doc", ["transport"], registry=theirs)
    for label in ("ws", "sse", "polling"):
        reference.labels(label)
    for label, n in [("ws", 3), ("ws", 1), ("polling", 40)]:
        loop.inc(label, n)
        reference.labels(label).inc(n)
    assert samples(ours, "tokens") == samples(theirs, "tokens")
