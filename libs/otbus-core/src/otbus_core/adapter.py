"""What every ingest adapter shares: settings, the source supervisor with reconnects, the
reading batcher, the spool and its drainer, readiness, metrics and the sources REST API.

An adapter service is then its protocol only: a `SourceConfig` subclass for its sources and
a `Source` (an async `run(ctx)` that connects, reads or subscribes, and hands readings to
`ctx.emit`, raising when the connection is lost). `main_adapter` wires the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import Field

from otbus_core.codec import AvroCodec
from otbus_core.dlq import encode_dead_letter
from otbus_core.exceptions import ConfigError
from otbus_core.kafka import admin_client, kafka_reachable
from otbus_core.ops import Check, ops_router
from otbus_core.publisher import RawEncoder, Reading, SpoolDrainer
from otbus_core.records import DeadLetter
from otbus_core.service import main_http
from otbus_core.settings import OtbusSettings
from otbus_core.sources import SourceConfig, SourceError, SourceStore
from otbus_core.spool import Overflow, Spool, SpoolRecord
from otbus_core.topics import TENANT_PATTERN

__all__ = [
    "AdapterRuntime",
    "AdapterSettings",
    "Source",
    "SourceContext",
    "checkpoint",
    "create_adapter_app",
    "main_adapter",
]

log = logging.getLogger(__name__)


class AdapterSettings(OtbusSettings):
    tenant: str = Field("default", pattern=TENANT_PATTERN)
    """Tenant of the readings of sources that do not name one."""
    sources_file: Path | None = None
    """YAML file with a list under `sources` (sources of other protocols are left to their adapters)."""
    state_dir: Path = Path(".otbus/state")
    """Where the adapter keeps its spool, API-added sources and certificates (a subdirectory per service)."""
    spool_max_bytes: int = Field(1024**3, ge=1024 * 1024)
    spool_overflow: Overflow = Overflow.BLOCK
    spool_fsync_ms: int = Field(20, ge=1, le=10_000)
    batch_max_readings: int = Field(1000, ge=1, le=100_000)
    """Readings per raw record at most."""
    batch_linger_ms: int = Field(5, ge=0, le=60_000)
    """How long a source's readings may wait for company before they are published."""
    gc_freeze: bool = True
    """What start-up made stays out of the collector's walks: a full collection over it stopped
    the adapter for 50-60 ms once every few seconds (MQTT publish -> raw topic p99 28-35 -> 17-18 ms)."""
    batch_when_idle: bool = True
    """Publish at once, without the linger, while Kafka has everything published so far (Nagle's
    rule: low latency at low rates, full batches once records queue up)."""
    peer_unreachable_after_s: float = Field(15.0, gt=0)
    """/readyz fails when an enabled source has been disconnected this long."""
    broker_unreachable_after_s: float = Field(15.0, gt=0)
    """/readyz fails when Kafka has not acknowledged a record this long."""
    admin_token: str | None = None
    """Bearer token required by POST/DELETE /api/v1/sources (open when not set: bind to localhost)."""

    @property
    def home(self) -> Path:
        return self.state_dir / self.service_name


# -- sources --------------------------------------------------------------------------------

SC = TypeVar("SC", bound=SourceConfig)


class SourceContext(Generic[SC]):
    """What a running source gets: its config, where to put readings, how to say it is connected."""

    def __init__(self, config: SC, runtime: AdapterRuntime[SC], state: SourceState) -> None:
        self.config = config
        self.runtime = runtime
        self.state = state
        self.log = logging.getLogger(f"otbus.source.{config.name}")

    @property
    def stopping(self) -> bool:
        """The source is being stopped (removed, or the adapter is shutting down): a connection
        that fails now fails because of that, and its points are not to be reported BAD."""
        return self.runtime.is_stopping(self.config.name)

    def emit(
        self,
        readings: Sequence[Reading],
        protocol: str | None = None,
        on_spooled: Callable[[], None] | None = None,
    ) -> None:
        """Publish readings (thread-safe; may block when the spool is full and the policy is `block`).

        `on_spooled` is called (on the batcher's thread) once the readings are in the spool,
        e.g. to acknowledge the protocol message they came in only when they are safe.
        """
        if readings:
            st = self.state
            st.readings += len(readings)
            st.last_read = time.time()
        self.runtime.batcher.add(self.config, protocol or self.config.protocol, readings, on_spooled)

    def dead_letter(self, original: bytes, reason: str, error_type: str, origin: str | None = None) -> None:
        """Send what could not be read as readings to the tenant's DLQ (through the spool)."""
        self.state.rejected += 1
        self.state.last_error = reason[:500]
        self.runtime.dead_letter(self.config, original, reason, error_type, origin)

    def connected(self) -> None:
        st = self.state
        if not st.connected:
            st.connected = True
            st.connected_since = time.time()
            st.last_error = None
            self.log.info("source %s connected to %s", self.config.name, self.config.endpoint)

    def error(self, message: str) -> None:
        """Note a problem that did not (yet) break the connection; shown by the API."""
        self.state.last_error = message


async def checkpoint() -> None:
    """Raise CancelledError if this task has been asked to stop, even when the request was lost.

    Python 3.11's `asyncio.wait_for` returns the awaited result instead of raising when the
    cancellation arrives just as that result does (python/cpython#86296, fixed in 3.12), and
    protocol libraries await every request through it. A source calls this after such awaits
    (after connecting, after each read) so a swallowed cancellation still ends it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Source(Protocol):
    async def run(self, ctx: SourceContext[Any]) -> None:
        """Connect, call `ctx.connected()`, then read until cancelled; raise when the peer is lost."""
        ...


@dataclass
class SourceState:
    connected: bool = False
    connected_since: float | None = None
    disconnected_since: float = field(default_factory=time.monotonic)
    last_read: float | None = None
    readings: int = 0
    reconnects: int = 0
    rejected: int = 0  # messages sent to the DLQ
    last_error: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "connected_since": self.connected_since,
            "last_read": self.last_read,
            "readings": self.readings,
            "reconnects": self.reconnects,
            "rejected": self.rejected,
            "last_error": self.last_error,
        }


# -- batching -------------------------------------------------------------------------------


@dataclass
class _Buffer:
    source: SourceConfig
    readings: list[Reading]
    since: float
    callbacks: list[Callable[[], None]]


class Batcher:
    """Collects each source's readings and publishes them as raw records into the spool.

    `add` only appends to the source's buffer; one flusher thread encodes and spools, so a
    source's records reach the spool in the order it read them. A buffer is flushed when
    it holds `max_readings` or its oldest reading has waited `linger` seconds. When the
    flusher falls behind (spool full under `block`), `add` waits: memory stays bounded.
    """

    def __init__(
        self, runtime: AdapterRuntime[Any], max_readings: int, linger: float, idle: Callable[[], bool] | None = None
    ) -> None:
        self.runtime = runtime
        self.max_readings = max_readings
        self.linger = linger
        self.idle = idle
        """When given and true, buffers are published without waiting for their linger."""
        self.max_buffered = max(100_000, max_readings * 20)
        self._buffers: dict[tuple[str, str], _Buffer] = {}
        self._buffered = 0
        self._cond = threading.Condition()
        self._full = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self.published_records = 0

    def start(self) -> None:
        self._thread.start()

    def add(
        self,
        src: SourceConfig,
        protocol: str,
        readings: Sequence[Reading],
        on_spooled: Callable[[], None] | None = None,
    ) -> None:
        with self._cond:
            while self._buffered >= self.max_buffered and not self._stop.is_set():
                self._cond.wait(0.5)
            key = (src.name, protocol)
            entry = self._buffers.get(key)
            if entry is None:
                entry = self._buffers[key] = _Buffer(src, [], time.monotonic(), [])
                self._full.set()  # the flusher may sleep for longer than this buffer's linger
            entry.readings.extend(readings)
            if on_spooled is not None:
                entry.callbacks.append(on_spooled)
            self._buffered += len(readings)
            if len(entry.readings) >= self.max_readings:
                self._full.set()

    def _run(self) -> None:
        idle = self.idle
        while not self._stop.is_set():
            with self._cond:
                oldest = min((b.since for b in self._buffers.values()), default=None)
            # Sleep until the oldest buffer is due (or a buffer fills up, or readings arrive, or
            # Kafka has acknowledged everything: `wake`). With nothing in flight there is no one
            # to wait for, so what has come in goes out now and batches grow only under load.
            if oldest is not None and idle is not None and idle():
                wait = 0.0
            else:
                wait = self.linger if oldest is None else max(0.0, oldest + self.linger - time.monotonic())
            if wait > 0:
                self._full.wait(wait)
            self._full.clear()
            self._flush(force=idle is not None and idle())
        self._flush(force=True)

    def wake(self) -> None:
        """Everything published so far is acknowledged (called by the spool drainer)."""
        if self._buffered:
            self._full.set()

    def _flush(self, force: bool) -> None:
        now = time.monotonic()
        with self._cond:
            due = [
                k
                for k, b in self._buffers.items()
                if force or len(b.readings) >= self.max_readings or now - b.since >= self.linger
            ]
            taken = [(k, self._buffers.pop(k)) for k in due]
        for (_, protocol), buf in taken:
            rt = self.runtime
            src, readings = buf.source, buf.readings
            tenant = src.tenant or rt.settings.tenant
            if readings:
                try:
                    records = rt.encoder.records(tenant, protocol, src.name, src.context(), readings)
                except (OverflowError, TypeError, ValueError) as e:
                    log.error("source %s: %d readings cannot be encoded (%s): dropped", src.name, len(readings), e)
                    rt.spool.dropped["unencodable"] = rt.spool.dropped.get("unencodable", 0) + len(readings)
                else:
                    rt.spool.append(records)
                    self.published_records += len(records)
            for cb in buf.callbacks:
                try:
                    cb()
                except Exception:
                    log.exception("source %s: on_spooled callback failed", src.name)
            with self._cond:
                self._buffered -= len(readings)
                self._cond.notify_all()

    def stop(self) -> None:
        self._stop.set()
        self._full.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)


# -- the runtime ----------------------------------------------------------------------------


class AdapterRuntime(Generic[SC]):
    def __init__(
        self,
        settings: AdapterSettings,
        store: SourceStore[SC],
        factory: Callable[[SC], Source],
    ) -> None:
        self.settings = settings
        self.store = store
        self.factory = factory
        home = settings.home
        self.spool = Spool(
            home / "spool",
            max_bytes=settings.spool_max_bytes,
            overflow=settings.spool_overflow,
            fsync_interval=settings.spool_fsync_ms / 1000,
        )
        self.encoder = RawEncoder(
            AvroCodec(schema_registry_url=settings.schema_registry_url), settings.batch_max_readings
        )
        self.drainer = SpoolDrainer(self.spool, settings, unreachable_after=settings.broker_unreachable_after_s)
        self.batcher = Batcher(
            self,
            settings.batch_max_readings,
            settings.batch_linger_ms / 1000,
            idle=(lambda: self.spool.depth_records == 0) if settings.batch_when_idle else None,
        )
        if settings.batch_when_idle:
            self.drainer.on_idle = self.batcher.wake
        self.states: dict[str, SourceState] = {}
        self.dead_letters = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}
        """Source tasks being stopped, and those that did not stop when cancelled (see `_cancel`)."""
        self._admin = admin_client(settings)
        self._collector = _Collector(self)
        self.started = time.monotonic()

    # lifecycle

    async def start(self) -> None:
        self.drainer.start()
        self.batcher.start()
        with suppress(ValueError):  # registered already (a second runtime in one process: tests)
            REGISTRY.register(self._collector)
        for src in self.store.all():
            self._launch(src)

    async def stop(self) -> None:
        log.info("adapter stopping: %d sources", len(self._tasks))
        await asyncio.gather(*(self._cancel(name) for name in list(self._tasks)))
        # Sources removed earlier (through the API) and left running get one more cancel: the
        # library that swallowed the earlier ones may take this one.
        leftover = [t for t in self._stopping.values() if not t.done()]
        if leftover:
            for t in leftover:
                t.cancel()
            await asyncio.wait(leftover, timeout=2.0)
        await asyncio.to_thread(self.batcher.stop)
        # Kafka away: no use waiting for it, what is left stays in the spool for the next start
        await asyncio.to_thread(self.drainer.stop, 1.0 if self.drainer.problem() else 10.0)
        self.spool.close()
        with suppress(KeyError):
            REGISTRY.unregister(self._collector)
        log.info(
            "adapter stopped: %d records (%d readings) stay spooled",
            self.spool.depth_records,
            self.spool.depth_readings,
        )
        stuck = sorted(n for n, t in self._stopping.items() if not t.done())
        if stuck:
            # asyncio would wait for them at exit forever: what was read is spooled, so end here
            # and let the process supervisor start a new one
            log.critical("source(s) %s would not stop: exiting without waiting for them", ", ".join(stuck))
            logging.shutdown()
            os._exit(70)

    def _launch(self, src: SC) -> None:
        self.states.setdefault(src.name, SourceState())
        if src.enabled:
            self._tasks[src.name] = asyncio.get_running_loop().create_task(self._supervise(src), name=src.name)

    def is_stopping(self, name: str) -> bool:
        task = self._stopping.get(name)
        return task is not None and not task.done()

    async def _cancel(self, name: str, grace: float = 6.0, patience: float = 12.0) -> None:
        """Stop a source's task: cancel it and give it `grace` seconds to clean up (close its
        connection); then cancel again every second, as a library may have swallowed the request
        (see `checkpoint`); after `patience` seconds leave it running, logged."""
        task = self._tasks.pop(name, None)
        if task is None:
            return
        self._stopping[name] = task  # until it has stopped, the name cannot be added again
        task.cancel()
        await asyncio.wait([task], timeout=grace)
        deadline = time.monotonic() + patience - grace
        while not task.done() and (left := deadline - time.monotonic()) > 0:
            log.warning("source %s is still running after being cancelled: cancelling again", name)
            task.cancel()
            await asyncio.wait([task], timeout=min(1.0, left))
        if not task.done():
            log.error("source %s did not stop within %.1fs of being cancelled: left running", name, patience)
            return
        if self._stopping.get(name) is task:
            del self._stopping[name]
        if not task.cancelled() and (e := task.exception()) is not None:
            log.warning("source %s ended with %s: %s", name, type(e).__name__, e)

    async def _supervise(self, src: SC) -> None:
        """Run the source; when it fails, reconnect with exponential backoff and jitter.

        Each attempt runs as a task of its own, so what one attempt leaves in its task's count
        of cancellation requests (Python 3.11's TaskGroup never withdraws the one it makes when
        a child fails while the group is being awaited) cannot make `checkpoint` end the next.
        Cancelling this task cancels the attempt it waits for.
        """
        state = self.states[src.name]
        delay = src.reconnect_initial_s
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        while True:
            ctx = SourceContext(src, self, state)
            try:
                attempt = loop.create_task(self.factory(src).run(ctx), name=f"{src.name}/attempt")
                try:
                    await attempt
                except asyncio.CancelledError:
                    if me is not None and me.cancelling():
                        raise
                    # the attempt was cancelled, not this task: it failed
                    raise ConnectionError("the source's task was cancelled") from None
                raise ConnectionError("the source stopped reading")
            except asyncio.CancelledError:
                state.connected = False
                raise
            except Exception as e:
                # Cancelling this task cancels the attempt, which may end with an error of its
                # own instead (a connect that failed as the cancel came): stopping wins.
                if me is not None and me.cancelling():
                    state.connected = False
                    raise asyncio.CancelledError from e
                if state.connected:  # just lost: the outage starts now (failed retries do not restart it)
                    delay = src.reconnect_initial_s
                    state.disconnected_since = time.monotonic()
                state.connected = False
                state.last_error = f"{type(e).__name__}: {e}"[:500]
                state.reconnects += 1
                wait = delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
                log.warning("source %s: %s; reconnecting in %.1fs", src.name, state.last_error, wait)
                await asyncio.sleep(wait)
                delay = min(src.reconnect_max_s, delay * 2)

    def dead_letter(self, src: SourceConfig, original: bytes, reason: str, error_type: str, origin: str | None) -> None:
        dl = DeadLetter(
            stage=self.settings.service_name,
            reason=reason,
            tenant=src.tenant or self.settings.tenant,
            error_type=error_type,
            source_id=src.name,
            original_topic=origin,
            original_value=original,
        )
        r = encode_dead_letter(self.encoder.codec, dl)
        key = r.key.encode() if isinstance(r.key, str) else r.key
        headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in r.headers]
        self.spool.append([SpoolRecord(r.topic, key, r.value, headers, 0)])
        self.dead_letters += 1

    # run-time changes

    async def add_source(self, doc: Any) -> SC:
        name = doc.get("name") if isinstance(doc, dict) else None
        if isinstance(name, str) and self.is_stopping(name):
            raise SourceError(f"source {name}: its earlier task has not stopped yet; try again later", 409)
        src = self.store.add(doc)
        self._launch(src)
        return src

    async def remove_source(self, name: str) -> SC:
        src = self.store.remove(name)
        await self._cancel(name)
        if name not in self._tasks:  # (not added again meanwhile)
            self.states.pop(name, None)
        return src

    # readiness

    def ready_checks(self) -> dict[str, Check]:
        def kafka() -> None:
            problem = self.drainer.problem()
            if problem:
                raise ConnectionError(problem)
            kafka_reachable(self._admin)

        def sources() -> None:
            """Every enabled source connected once since start, and none disconnected beyond the limit."""
            limit = self.settings.peer_unreachable_after_s
            now = time.monotonic()
            down = []
            for s in self.store.all():
                st = self.states.get(s.name)
                if not s.enabled or st is None or st.connected:
                    continue
                if st.connected_since is None:
                    down.append(f"{s.name} (not connected yet: {st.last_error or 'connecting'})")
                elif now - st.disconnected_since > limit:
                    down.append(f"{s.name} (unreachable for over {limit:.0f}s: {st.last_error})")
            if down:
                raise ConnectionError("; ".join(down))

        return {"kafka": kafka, "sources": sources}

    def source_view(self, src: SC) -> dict[str, Any]:
        return {**src.public(), "status": self.states.get(src.name, SourceState()).public()}

    def status(self) -> dict[str, Any]:
        sp = self.spool
        return {
            "tenant": self.settings.tenant,
            "spool": {
                "records": sp.depth_records,
                "readings": sp.depth_readings,
                "bytes": sp.size_bytes,
                "max_bytes": sp.max_bytes,
                "overflow": sp.overflow.value,
                "dropped": dict(sp.dropped),
            },
            "kafka": {
                "delivered_readings": self.drainer.delivered_readings,
                "in_flight": self.drainer.in_flight,
                "already_delivered_records": self.drainer.skipped_resends,
                "last_delivery": self.drainer.last_delivery,
                "problem": self.drainer.problem(),
            },
        }


class _Collector(Collector):
    """Adapter metrics read from the runtime at scrape time (nothing on the reading path)."""

    def __init__(self, rt: AdapterRuntime[Any]) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Any]:
        rt = self.rt
        readings = CounterMetricFamily("otbus_adapter_readings", "Readings read, by source", labels=["source"])
        reconnects = CounterMetricFamily("otbus_adapter_reconnects", "Reconnects, by source", labels=["source"])
        connected = GaugeMetricFamily("otbus_adapter_connected", "1 when the source is connected", labels=["source"])
        last = GaugeMetricFamily(
            "otbus_adapter_last_read_timestamp_seconds", "When the source last read", labels=["source"]
        )
        for name, st in list(rt.states.items()):
            readings.add_metric([name], st.readings)
            reconnects.add_metric([name], st.reconnects)
            connected.add_metric([name], 1.0 if st.connected else 0.0)
            if st.last_read is not None:
                last.add_metric([name], st.last_read)
        yield from (readings, reconnects, connected, last)
        sp = rt.spool
        yield GaugeMetricFamily(
            "otbus_spool_records", "Records in the spool not yet acknowledged", value=sp.depth_records
        )
        yield GaugeMetricFamily(
            "otbus_spool_readings", "Readings in the spool not yet acknowledged", value=sp.depth_readings
        )
        yield GaugeMetricFamily("otbus_spool_bytes", "Bytes on disk in the spool", value=sp.size_bytes)
        dropped = CounterMetricFamily("otbus_spool_dropped_readings", "Readings dropped, by reason", labels=["reason"])
        for reason, n in list(sp.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        yield CounterMetricFamily("otbus_adapter_dead_letters", "Messages sent to the DLQ", value=rt.dead_letters)
        yield CounterMetricFamily(
            "otbus_adapter_delivered_readings", "Readings Kafka acknowledged", value=rt.drainer.delivered_readings
        )
        yield CounterMetricFamily(
            "otbus_adapter_resends_skipped_records",
            "Spooled records found already in Kafka after a restart (acknowledged without sending again)",
            value=rt.drainer.skipped_resends,
        )
        yield GaugeMetricFamily(
            "otbus_adapter_in_flight_records", "Records sent, not yet acknowledged", value=rt.drainer.in_flight
        )


# -- the app --------------------------------------------------------------------------------


def create_adapter_app(
    runtime: AdapterRuntime[Any],
    title: str,
    routes: Callable[[FastAPI, AdapterRuntime[Any]], None] | None = None,
) -> FastAPI:
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=title, lifespan=lifespan)
    app.include_router(ops_router(runtime.ready_checks()))

    def authorized(request: Request) -> JSONResponse | None:
        want = settings.admin_token
        if want is None:
            return None
        got = request.headers.get("authorization", "")
        if got != f"Bearer {want}":
            return JSONResponse({"detail": "a valid admin token (Authorization: Bearer) is required"}, 401)
        return None

    async def list_sources() -> dict[str, Any]:
        return {"sources": [runtime.source_view(s) for s in runtime.store.all()]}

    async def add_source(request: Request) -> JSONResponse:
        if (denied := authorized(request)) is not None:
            return denied
        try:
            doc = await request.json()
        except ValueError:
            return JSONResponse({"detail": "body: not valid JSON"}, 400)
        try:
            src = await runtime.add_source(doc)
        except SourceError as e:
            return JSONResponse({"detail": str(e)}, e.status)
        return JSONResponse({"status": "ok", "message": f"Source '{src.name}' added"}, 201)

    async def remove_source(name: str, request: Request) -> JSONResponse:
        if (denied := authorized(request)) is not None:
            return denied
        try:
            src = await runtime.remove_source(name)
        except SourceError as e:
            return JSONResponse({"detail": str(e)}, e.status)
        return JSONResponse({"status": "ok", "message": f"Source '{src.name}' removed"})

    async def one_source(name: str) -> JSONResponse:
        src = runtime.store.get(name)
        if src is None:
            return JSONResponse({"detail": f"no source named {name!r}"}, 404)
        return JSONResponse(runtime.source_view(src))

    for prefix in ("/api/v1", "/api"):  # /api/... as in the seed's connector
        app.add_api_route(f"{prefix}/sources", list_sources, methods=["GET"])
        app.add_api_route(f"{prefix}/sources", add_source, methods=["POST"])
        app.add_api_route(f"{prefix}/sources/{{name}}", one_source, methods=["GET"])
        app.add_api_route(f"{prefix}/sources/{{name}}", remove_source, methods=["DELETE"])

    @app.get("/api/v1/status")
    async def status() -> dict[str, Any]:
        return runtime.status()

    if routes is not None:
        routes(app, runtime)
    app.state.runtime = runtime
    return app


S = TypeVar("S", bound=AdapterSettings)


def main_adapter(
    prog: str,
    settings_cls: type[S],
    build: Callable[[S], AdapterRuntime[Any]],
    title: str,
    routes: Callable[[FastAPI, AdapterRuntime[Any]], None] | None = None,
) -> int:
    def create(settings: S) -> FastAPI:
        try:
            runtime = build(settings)
        except OSError as e:
            raise ConfigError(f"OTBUS_STATE_DIR: {settings.home} cannot be used: {e}") from None
        return create_adapter_app(runtime, title, routes)

    return main_http(prog, settings_cls, create)
