"""Target tables: routing, one Zerobus stream per table, a circuit breaker per table.

All SDK calls happen on the consumer thread; the HTTP side only reads the counters.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from zerobus import (
    HeadersProvider,
    NonRetriableException,
    StreamConfigurationOptions,
    TableProperties,
    ZerobusException,
    ZerobusSdk,
)

from otbus_zerobus_sink.catalog import CatalogCheck, TableMismatch
from otbus_zerobus_sink.config import ZerobusSinkSettings
from otbus_zerobus_sink.rows import TagRow

__all__ = ["Breaker", "Router", "StaticHeaders", "Target", "TargetRefused", "Targets"]

log = logging.getLogger(__name__)

SENT = Counter("otbus_zerobus_records_sent_total", "Records acknowledged by Zerobus", ["table"])
BATCHES = Counter("otbus_zerobus_batches_sent_total", "Batches acknowledged by Zerobus", ["table"])
FAILURES = Counter("otbus_zerobus_failures_total", "Failed batch deliveries", ["table", "kind"])
STREAMS = Counter("otbus_zerobus_streams_opened_total", "Zerobus streams opened", ["table"])
ACK_SECONDS = Histogram(
    "otbus_zerobus_ack_seconds",
    "From the first record of a batch handed to the SDK to its acknowledgment",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CIRCUIT_OPEN = Gauge("otbus_zerobus_circuit_open", "1 while the table's circuit breaker is open", ["table"])
LAST_SUCCESS = Gauge("otbus_zerobus_last_success_timestamp_seconds", "Last acknowledged batch", ["table"])


class TargetRefused(Exception):
    """Zerobus refused to open a stream for the table (missing table, permissions, schema)."""


class StaticHeaders(HeadersProvider):  # type: ignore[misc]  # the SDK's base class is untyped
    """Fixed headers: the embedded emulator, or a bearer token obtained elsewhere."""

    def __init__(self, table: str, token: str = "local") -> None:  # noqa: S107 - not a secret
        super().__init__()
        self._headers = [("authorization", f"Bearer {token}"), ("x-databricks-zerobus-table-name", table)]

    def get_headers(self) -> list[tuple[str, str]]:
        return self._headers


class Router:
    """tenant/source rule, then source, then tenant, then the default table template."""

    def __init__(self, settings: ZerobusSinkSettings) -> None:
        self.default = settings.default_table
        self.tenants = dict(settings.tenant_tables)
        self.sources = dict(settings.source_tables)
        self._cache: dict[tuple[str, str], str] = {}

    def __call__(self, tenant: str, source: str) -> str:
        key = (tenant, source)
        table = self._cache.get(key)
        if table is None:
            table = (
                self.sources.get(f"{tenant}/{source}")
                or self.sources.get(source)
                or self.tenants.get(tenant)
                or self.default.replace("{tenant}", tenant)
            )
            if len(self._cache) < 100_000:
                self._cache[key] = table
        return table


@dataclass
class Breaker:
    failures_to_open: int
    open_seconds: float
    failures: int = 0
    opened_at: float | None = None

    @property
    def open(self) -> bool:
        return self.opened_at is not None and time.monotonic() - self.opened_at < self.open_seconds

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self) -> bool:
        """Count a failed batch; True when this one opened (or re-opened) the circuit."""
        self.failures += 1
        if self.failures >= self.failures_to_open:
            self.opened_at = time.monotonic()
            return True
        return False


@dataclass
class Target:
    table: str
    breaker: Breaker
    stream: Any = None
    state: str = "idle"
    records_sent: int = 0
    batches_sent: int = 0
    failures: int = 0
    streams_opened: int = 0
    dead_lettered: int = 0
    last_success: float | None = None
    last_error: str | None = None
    last_ack_ms: float | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "stream_state": "CIRCUIT_OPEN" if self.breaker.open else self.state,
            "records_sent": self.records_sent,
            "batches_sent": self.batches_sent,
            "failures": self.failures,
            "consecutive_failures": self.breaker.failures,
            "streams_opened": self.streams_opened,
            "dead_lettered": self.dead_lettered,
            "last_successful_send": self.last_success,
            "last_ack_ms": self.last_ack_ms,
            "last_error": self.last_error,
        }


class Targets:
    """The SDK, the streams and the per-table state."""

    def __init__(self, settings: ZerobusSinkSettings, endpoint: str, workspace_url: str) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.workspace_url = workspace_url
        self.sdk = ZerobusSdk(endpoint, workspace_url, application_name="otbus-zerobus-sink/0.1")
        self.targets: dict[str, Target] = {}
        self.options = StreamConfigurationOptions(
            max_inflight_records=max(1_000_000, 2 * settings.batch_max_records),
            recovery=True,
            recovery_retries=settings.stream_recovery_retries,
            recovery_backoff_ms=500,
            recovery_timeout_ms=15_000,
            server_lack_of_ack_timeout_ms=int(settings.ack_timeout_s * 1000),
            flush_timeout_ms=int(settings.ack_timeout_s * 1000),
        )
        self._headers_factory = _headers_factory(settings)
        self._properties: dict[str, TableProperties] = {}
        self.catalog: CatalogCheck | None = None
        client_id, secret = settings.oauth_client_id(), settings.oauth_client_secret()
        if self._headers_factory is None and settings.workspace_url and client_id and secret:
            self.catalog = CatalogCheck(settings.workspace_url, client_id, secret)
        self._checked: set[str] = set()

    def target(self, table: str) -> Target:
        t = self.targets.get(table)
        if t is None:
            t = Target(table, Breaker(self.settings.breaker_failures, self.settings.breaker_open_s))
            self.targets[table] = t
            CIRCUIT_OPEN.labels(table).set(0)
        return t

    def stream(self, t: Target) -> Any:
        """The table's open stream, opened now if need be; raises TargetRefused or ZerobusException."""
        if t.stream is not None:
            return t.stream
        props = self._properties.get(t.table)
        if props is None:
            props = self._properties[t.table] = TableProperties(t.table, TagRow.DESCRIPTOR)
        if self.catalog is not None and t.table not in self._checked:
            try:
                self.catalog.check(t.table)
            except TableMismatch as e:
                t.state = "REFUSED"
                raise TargetRefused(f"unity catalog: {e}") from e
            self._checked.add(t.table)
        t.state = "OPENING"
        try:
            if self._headers_factory is not None:
                t.stream = self.sdk.create_stream(
                    table_properties=props, headers_provider=self._headers_factory(t.table), options=self.options
                )
            else:
                t.stream = self.sdk.create_stream(
                    self.settings.oauth_client_id(),
                    self.settings.oauth_client_secret(),
                    props,
                    self.options,
                )
        except NonRetriableException as e:
            t.state = "REFUSED"
            raise TargetRefused(f"{t.table}: {e}") from e
        except ZerobusException:
            t.state = "FAILED"
            raise
        t.state = "OPENED"
        t.streams_opened += 1
        STREAMS.labels(t.table).inc()
        log.info("zerobus stream opened for %s", t.table)
        return t.stream

    def drop(self, t: Target) -> None:
        """Forget the table's stream after a failure (a new one is opened for the next attempt)."""
        s, t.stream = t.stream, None
        if s is None:
            return
        try:
            s.close()
        except Exception as e:  # a failed stream may refuse to close politely
            log.debug("closing the failed stream of %s: %s", t.table, e)

    def close(self) -> None:
        """Close every stream (flushing what is in flight) and release the SDK."""
        for t in self.targets.values():
            s, t.stream = t.stream, None
            if s is None:
                continue
            try:
                s.flush()
                s.close()
            except Exception as e:
                log.warning("closing the stream of %s: %s", t.table, e)
            t.state = "CLOSED"
        self.sdk = None  # dropped before the interpreter goes

    def snapshot(self) -> list[dict[str, Any]]:
        return [t.snapshot() for t in list(self.targets.values())]


def _headers_factory(settings: ZerobusSinkSettings) -> Any:
    """table -> HeadersProvider, or None for OAuth."""
    if settings.headers_provider is not None:
        module, _, name = settings.headers_provider.partition(":")
        factory = getattr(importlib.import_module(module), name)
        return lambda table: factory(table)
    if settings.embedded_emulator:
        return StaticHeaders
    return None


def record_success(t: Target, records: int, ack_seconds: float) -> None:
    t.records_sent += records
    t.batches_sent += 1
    t.last_success = time.time()
    t.last_error = None
    t.last_ack_ms = round(ack_seconds * 1000, 2)
    if t.breaker.opened_at is not None:
        log.info("circuit for %s closed again", t.table)
    t.breaker.success()
    SENT.labels(t.table).inc(records)
    BATCHES.labels(t.table).inc()
    ACK_SECONDS.labels(t.table).observe(ack_seconds)
    CIRCUIT_OPEN.labels(t.table).set(0)
    LAST_SUCCESS.labels(t.table).set(t.last_success)


def record_failure(t: Target, kind: str, error: BaseException) -> None:
    t.failures += 1
    t.last_error = f"{type(error).__name__}: {error}"[:500]
    FAILURES.labels(t.table, kind).inc()
    if t.breaker.failure():
        CIRCUIT_OPEN.labels(t.table).set(1)
        log.warning(
            "circuit for %s open for %.0fs after %d failed batches: %s",
            t.table,
            t.breaker.open_seconds,
            t.breaker.failures,
            t.last_error,
        )
