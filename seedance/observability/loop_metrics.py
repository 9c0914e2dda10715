"""Metrics on the per-chunk path, kept as plain numbers and turned into Prometheus families when /metrics is
scraped. prometheus_client's Histogram.observe and Counter.inc take a lock and walk the buckets in Python
(several microseconds a call, once per chunk on every stream); these are fed from the event loop only (one
thread), so they need no lock, and the scrape (on the loop too) reads them whole."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric


class LoopHistogram:
    """A histogram with one label, updated from the event loop only. Bucket semantics as Prometheus's:
    a value counts in every bucket whose upper bound is >= it."""

    def __init__(self, name: str, documentation: str, label: str, values: Iterable[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = list(buckets)
        self.counts = {v: [0] * (len(self.bounds) + 1) for v in values}  # the last: above every bound
        self.sums = dict.fromkeys(self.counts, 0.0)

    def observe(self, value_of_label: str, value: float) -> None:
        self.counts[value_of_label][bisect_left(self.bounds, value)] += 1
        self.sums[value_of_label] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value_of_label, counts in self.counts.items():
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([value_of_label], buckets, self.sums[value_of_label])
        yield family


class LoopCounter:
    """A counter with one label, updated from the event loop only."""

    def __init__(self, name: str, documentation: str, label: str, values: Iterable[str]) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.totals = dict.fromkeys(values, 0)

    def inc(self, value_of_label: str, n: int = 1) -> None:
        self.totals[value_of_label] += n

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value_of_label, total in self.totals.items():
            family.add_metric([value_of_label], total)
        yield family
