"""Sensors: hooks the runner and producer call; Prometheus is one implementation.

Labels take a fixed set of values (stage, outcome): never a tag path or a topic of a tenant.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["NullSensor", "PrometheusSensor", "Sensor"]


class Sensor(Protocol):
    def on_batch(self, consumed: int, seconds: float) -> None: ...
    def on_commit(self, partitions: int) -> None: ...
    def on_dead_letter(self, count: int) -> None: ...
    def on_produced(self, count: int) -> None: ...
    def on_delivery(self, ok: bool) -> None: ...
    def on_retry(self, kind: str) -> None: ...
    def on_lag(self, lag: int) -> None: ...


class NullSensor:
    def on_batch(self, consumed: int, seconds: float) -> None:
        pass

    def on_commit(self, partitions: int) -> None:
        pass

    def on_dead_letter(self, count: int) -> None:
        pass

    def on_produced(self, count: int) -> None:
        pass

    def on_delivery(self, ok: bool) -> None:
        pass

    def on_retry(self, kind: str) -> None:
        pass

    def on_lag(self, lag: int) -> None:
        pass


_CONSUMED = Counter("otbus_records_consumed", "Records consumed", ["stage"])
_BATCHES = Histogram(
    "otbus_batch_seconds",
    "Time to process and commit one batch",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
_COMMITS = Counter("otbus_commits", "Offset commits", ["stage"])
_DLQ = Counter("otbus_dead_letters", "Records sent to the dead-letter topic", ["stage"])
_PRODUCED = Counter("otbus_records_produced", "Records handed to the producer", ["stage"])
_DELIVERED = Counter("otbus_deliveries", "Producer delivery reports", ["stage", "outcome"])
_RETRIES = Counter("otbus_retries", "Batches retried after a transient failure", ["stage", "kind"])
_LAG = Gauge("otbus_consumer_lag", "Records behind the end of the assigned partitions", ["stage"])


class PrometheusSensor:
    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._consumed = _CONSUMED.labels(stage)
        self._batches = _BATCHES.labels(stage)
        self._commits = _COMMITS.labels(stage)
        self._dlq = _DLQ.labels(stage)
        self._produced = _PRODUCED.labels(stage)
        self._ok = _DELIVERED.labels(stage, "ok")
        self._failed = _DELIVERED.labels(stage, "failed")
        self._lag = _LAG.labels(stage)

    def on_batch(self, consumed: int, seconds: float) -> None:
        self._consumed.inc(consumed)
        self._batches.observe(seconds)

    def on_commit(self, partitions: int) -> None:
        self._commits.inc()

    def on_dead_letter(self, count: int) -> None:
        self._dlq.inc(count)

    def on_produced(self, count: int) -> None:
        self._produced.inc(count)

    def on_delivery(self, ok: bool) -> None:
        (self._ok if ok else self._failed).inc()

    def on_retry(self, kind: str) -> None:
        _RETRIES.labels(self.stage, kind).inc()

    def on_lag(self, lag: int) -> None:
        self._lag.set(lag)
