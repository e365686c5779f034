"""A local Zerobus: the gRPC ingest protocol the real SDK speaks, writing local Delta tables.

It behaves like the service where the SDK can tell: the stream is created by the first
message, offsets must grow, acknowledgments are cumulative and sent only after the Delta
commit holding the records. For tests it can be told to misbehave (`Faults`): announce
and then end streams, abort with a retriable or a non-retriable status, refuse tables,
delay or coalesce acknowledgments.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from pydantic import BaseModel, Field

from otbus_zerobus_sink._generated import zerobus_service_pb2 as pb
from otbus_zerobus_sink._generated import zerobus_service_pb2_grpc as pb_grpc
from otbus_zerobus_sink.emulator.delta import TableWriter, WriteResult, existing_columns, table_path
from otbus_zerobus_sink.rowschema import Column, RowSchemaError, columns_from_proto

__all__ = ["Emulator", "EmulatorCore", "Faults"]

log = logging.getLogger(__name__)

_TABLE = re.compile(r"^[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+$")
StatusName = Literal["NOT_FOUND", "PERMISSION_DENIED", "INVALID_ARGUMENT", "UNAVAILABLE", "UNAUTHENTICATED"]


class Faults(BaseModel):
    """What the emulator is told to get wrong; all off by default. Changed at run time over HTTP."""

    close_every_s: float | None = Field(None, gt=0)
    """Announce `close_stream_signal` this long after a stream opens, and end it `close_grace_s` later."""
    close_grace_s: float = Field(1.0, ge=0)
    unavailable_rate: float = Field(0.0, ge=0, le=1)
    """Share of ingest messages answered by aborting the stream with UNAVAILABLE (the message is not
    written); spread evenly: at 0.01 every hundredth message fails."""
    reject_pattern: str | None = None
    """A record whose bytes match this regex aborts its stream with INVALID_ARGUMENT (non-retriable)."""
    table_status: dict[str, StatusName] = {}
    """Tables whose stream creation fails with this status."""
    ack_delay_ms: int = Field(0, ge=0)
    """Hold each acknowledgment this long after the commit."""
    ack_interval_ms: int = Field(0, ge=0)
    """Send at most one (cumulative) acknowledgment per stream per interval."""


@dataclass
class Counters:
    streams_opened: int = 0
    streams_active: int = 0
    streams_closed_by_signal: int = 0
    records_received: int = 0
    messages_received: int = 0
    aborted_unavailable: int = 0
    aborted_invalid: int = 0
    refused_streams: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class _Schema:
    """A row descriptor sent by a client: its message class and Delta columns."""

    def __init__(self, raw: bytes) -> None:
        proto = descriptor_pb2.DescriptorProto()
        try:
            proto.ParseFromString(raw)
        except DecodeError as e:
            raise RowSchemaError(f"descriptor_proto does not parse: {e}") from None
        if not proto.name:
            raise RowSchemaError("descriptor_proto has no message name")
        self.columns: list[Column] = columns_from_proto(proto)
        fd = descriptor_pb2.FileDescriptorProto(name=f"emulated_{uuid.uuid4().hex}.proto", package="emulated")
        fd.message_type.add().CopyFrom(proto)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fd)  # type: ignore[no-untyped-call]
        found = pool.FindMessageTypeByName(f"emulated.{proto.name}")  # type: ignore[no-untyped-call]
        self.message_class = message_factory.GetMessageClass(found)


class EmulatorCore:
    """State shared by every stream: tables, faults, counters, issued OAuth tokens."""

    def __init__(
        self,
        data_dir: Path,
        *,
        commit_interval: float = 0.1,
        max_commit_rows: int = 200_000,
        create_tables: bool = True,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.commit_interval = commit_interval
        self.max_commit_rows = max_commit_rows
        self.create_tables = create_tables
        self.client_id = client_id
        self.client_secret = client_secret
        self.faults = Faults()
        self.counters = Counters()
        self.tokens: set[str] = set()
        self._writers: dict[str, TableWriter] = {}
        self._ingested = 0
        self._lock = threading.Lock()

    def due_failure(self, rate: float) -> bool:
        """Exactly `rate` of the ingest messages fail, evenly spread (so a test always sees some)."""
        self._ingested += 1
        due = int(self._ingested * rate) > int((self._ingested - 1) * rate)
        return due

    # -- OAuth (the workspace's /oidc/v1/token, client credentials) ----------------

    @property
    def auth_required(self) -> bool:
        return self.client_id is not None

    def issue_token(self, client_id: str, client_secret: str) -> str | None:
        if not self.auth_required:
            return secrets.token_urlsafe(24)
        if client_id != self.client_id or not secrets.compare_digest(client_secret, self.client_secret or ""):
            return None
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return token

    def authorized(self, metadata: dict[str, str]) -> bool:
        if not self.auth_required:
            return True
        auth = metadata.get("authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.tokens

    # -- tables -------------------------------------------------------------------

    def writer(self, table: str, schema: _Schema) -> TableWriter:
        """The table's writer, created on first use; raises when the table and the descriptor disagree."""
        with self._lock:
            w = self._writers.get(table)
            if w is not None:
                _agree(table, [(c.name, c.delta_type) for c in w.columns], schema.columns)
                return w
            path = table_path(self.data_dir, table)
            existing = existing_columns(path)
            if existing is None and not self.create_tables:
                raise LookupError(f"table {table} does not exist")
            if existing is not None:
                _agree(table, existing, schema.columns)
            w = self._writers[table] = TableWriter(
                table, path, schema.columns, self.commit_interval, self.max_commit_rows
            )
            return w

    def tables(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            writers = dict(self._writers)
        return {
            name: {
                "path": str(w.path),
                "rows_written": w.stats.rows,
                "commits": w.stats.commits,
                "failed_commits": w.stats.failed_commits,
                "last_commit_ms": w.stats.last_commit_ms,
            }
            for name, w in writers.items()
        }

    def describe(self, table: str) -> list[tuple[str, str]] | None:
        """(column, Delta type) of a table, None when it does not exist (the catalog lookup)."""
        with self._lock:
            w = self._writers.get(table)
        if w is not None:
            return [(c.name, c.delta_type) for c in w.columns]
        return existing_columns(table_path(self.data_dir, table))

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "streams_opened": c.streams_opened,
            "streams_active": c.streams_active,
            "streams_closed_by_signal": c.streams_closed_by_signal,
            "messages_received": c.messages_received,
            "records_received": c.records_received,
            "aborted_unavailable": c.aborted_unavailable,
            "aborted_invalid": c.aborted_invalid,
            "refused_streams": c.refused_streams,
            "tables": self.tables(),
            "faults": self.faults.model_dump(),
        }

    def close(self) -> None:
        with self._lock:
            writers = list(self._writers.values())
            self._writers.clear()
        for w in writers:
            w.close()


def _agree(table: str, have: list[tuple[str, str]], want: list[Column]) -> None:
    """Every column of the descriptor exists in the table with the same type (the table may have more)."""
    types = dict(have)
    for c in want:
        if c.name not in types:
            raise RowSchemaError(f"table {table} has no column {c.name}")
        if types[c.name] != c.delta_type:
            raise RowSchemaError(
                f"table {table} column {c.name} is {types[c.name]}, the descriptor makes it {c.delta_type}"
            )


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Stream:
    """One EphemeralStream call."""

    def __init__(self, core: EmulatorCore, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.core = core
        self.context = context
        self.id = uuid.uuid4().hex
        self.loop = asyncio.get_running_loop()
        self.submitted = -1
        self.durable = -1
        self.sent = -1
        self.error: str | None = None
        self.changed = asyncio.Event()
        self.closing = asyncio.Event()
        self.progress = asyncio.Event()  # an acknowledgment went out
        self.send_lock = asyncio.Lock()  # gRPC allows one pending write per call

    async def send(self, response: pb.EphemeralStreamResponse) -> None:
        async with self.send_lock:
            await self.context.write(response)

    def failed(self) -> bool:
        return self.error is not None

    def on_written(self, result: WriteResult) -> None:  # writer thread
        self.loop.call_soon_threadsafe(self._written, result)

    def _written(self, result: WriteResult) -> None:
        if result.error is not None:
            self.error = result.error
        elif self.error is None:  # nothing past a failed commit is ever acknowledged
            self.durable = max(self.durable, result.offset)
        self.changed.set()


class ZerobusServicer(pb_grpc.ZerobusServicer):
    def __init__(self, core: EmulatorCore) -> None:
        self.core = core

    async def EphemeralStream(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # the SDK waits for the response headers before it sends create_stream
        await context.send_initial_metadata(())
        core = self.core
        stream = _Stream(core, context)
        acker: asyncio.Task[None] | None = None
        closer: asyncio.Task[None] | None = None
        try:
            writer, schema = await self._create(stream, context)
            core.counters.streams_opened += 1
            core.counters.streams_active += 1
            await context.write(
                pb.EphemeralStreamResponse(create_stream_response=pb.CreateIngestStreamResponse(stream_id=stream.id))
            )
            acker = asyncio.create_task(self._ack_loop(stream))
            if core.faults.close_every_s:
                closer = asyncio.create_task(self._close_later(stream, core.faults.close_every_s))
            await self._ingest(stream, writer, schema)
        except _Abort as e:
            core.counters.by_status[e.code.name] = core.counters.by_status.get(e.code.name, 0) + 1
            await context.abort(e.code, e.details)
        finally:
            for t in (acker, closer):
                if t is not None:
                    t.cancel()
            if acker is not None:
                core.counters.streams_active -= 1

    async def _create(
        self, stream: _Stream, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[TableWriter, _Schema]:
        core = self.core
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        if not core.authorized(metadata):
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("payload") != "create_stream":
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a stream must be create_stream")
        req = first.create_stream
        table = req.table_name
        if not _TABLE.match(table):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"table_name {table!r} is not catalog.schema.table")
        header = metadata.get("x-databricks-zerobus-table-name")
        if header is not None and header != table:
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, f"token is for table {header}, stream is for {table}")
        status = core.faults.table_status.get(table)
        if status is not None:
            core.counters.refused_streams += 1
            raise _Abort(getattr(grpc.StatusCode, status), f"table {table}: {status} (injected)")
        if req.record_type not in (pb.PROTO, pb.RECORD_TYPE_UNSPECIFIED) and req.HasField("record_type"):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the emulator accepts protobuf records only")
        try:
            schema = _Schema(req.descriptor_proto)
            writer = core.writer(table, schema)
        except RowSchemaError as e:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        except LookupError as e:
            raise _Abort(grpc.StatusCode.NOT_FOUND, str(e)) from None
        return writer, schema

    async def _ingest(self, stream: _Stream, writer: TableWriter, schema: _Schema) -> None:
        core, context = self.core, stream.context
        parse = schema.message_class.FromString
        reading: asyncio.Task[Any] | None = None
        closing = asyncio.create_task(stream.closing.wait())
        try:
            while True:
                reading = asyncio.create_task(context.read())
                done, _ = await asyncio.wait({reading, closing}, return_when=asyncio.FIRST_COMPLETED)
                if closing in done:
                    core.counters.streams_closed_by_signal += 1
                    raise _Abort(grpc.StatusCode.UNAVAILABLE, "stream closed by the server (lifetime reached)")
                req = reading.result()
                if req is grpc.aio.EOF:
                    await self._drain(stream)
                    return
                kind = req.WhichOneof("payload")
                if kind == "ingest_record":
                    offset = req.ingest_record.offset_id
                    payloads = [req.ingest_record.proto_encoded_record]
                elif kind == "ingest_record_batch":
                    offset = req.ingest_record_batch.offset_id
                    payloads = list(req.ingest_record_batch.proto_encoded_batch.records)
                else:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind} after create_stream")
                if offset <= stream.submitted:
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"offset_id {offset} does not follow {stream.submitted}",
                    )
                core.counters.messages_received += 1
                core.counters.records_received += len(payloads)
                faults = core.faults
                if faults.unavailable_rate and core.due_failure(faults.unavailable_rate):
                    core.counters.aborted_unavailable += 1
                    raise _Abort(grpc.StatusCode.UNAVAILABLE, f"injected failure at offset {offset}")
                if faults.reject_pattern:
                    pattern = re.compile(faults.reject_pattern.encode())
                    for i, p in enumerate(payloads):
                        if pattern.search(p):
                            core.counters.aborted_invalid += 1
                            raise _Abort(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                f"record {i} of offset {offset} violates a table constraint (injected)",
                            )
                try:
                    rows = [parse(p) for p in payloads]
                except DecodeError as e:
                    core.counters.aborted_invalid += 1
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"a record at offset {offset} does not parse: {e}"
                    ) from None
                stream.submitted = offset
                writer.submit(rows, offset, stream.on_written)
        finally:
            closing.cancel()
            if reading is not None and not reading.done():
                reading.cancel()

    async def _drain(self, stream: _Stream) -> None:
        """The client half-closed: acknowledge what it sent, then end the call."""
        deadline = time.monotonic() + 60
        while stream.sent < stream.submitted and stream.error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stream.progress.clear()
            try:
                await asyncio.wait_for(stream.progress.wait(), left)
            except TimeoutError:
                return

    async def _ack_loop(self, stream: _Stream) -> None:
        faults = self.core.faults
        while True:
            await stream.changed.wait()
            stream.changed.clear()
            if stream.error is not None:
                await stream.context.abort(grpc.StatusCode.UNAVAILABLE, f"write failed: {stream.error}")
                return
            if faults.ack_delay_ms:
                await asyncio.sleep(faults.ack_delay_ms / 1000)
            if stream.failed():  # while the acknowledgment was held back
                stream.changed.set()  # reported at the top of the loop
                continue
            if stream.durable > stream.sent:
                up_to = stream.durable
                await stream.send(
                    pb.EphemeralStreamResponse(
                        ingest_record_response=pb.IngestRecordResponse(durability_ack_up_to_offset=up_to)
                    )
                )
                stream.sent = up_to
                stream.progress.set()
            if faults.ack_interval_ms:
                await asyncio.sleep(faults.ack_interval_ms / 1000)

    async def _close_later(self, stream: _Stream, after: float) -> None:
        await asyncio.sleep(after)
        grace = self.core.faults.close_grace_s
        signal = pb.CloseStreamSignal()
        signal.duration.FromMilliseconds(int(grace * 1000))
        await stream.send(pb.EphemeralStreamResponse(close_stream_signal=signal))
        await asyncio.sleep(grace)
        stream.closing.set()


class Emulator:
    """The gRPC server (and, optionally, its HTTP side) on an event loop of its own thread.

    Used embedded by the sink when no Databricks endpoint is configured, and by tests.
    """

    def __init__(self, core: EmulatorCore, host: str = "127.0.0.1", port: int = 0) -> None:
        self.core = core
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start_async(self) -> None:
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ]
        )
        pb_grpc.add_ZerobusServicer_to_server(ZerobusServicer(self.core), self._server)  # type: ignore[no-untyped-call]
        port = self._server.add_insecure_port(f"{self.host}:{self.port}")
        if port == 0:
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        self.port = port
        await self._server.start()
        log.info("zerobus emulator listening on %s, tables under %s", self.endpoint, self.core.data_dir)

    async def stop_async(self, grace: float = 2.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        self.core.close()

    def start(self) -> str:
        """Serve on a background thread; returns the endpoint once listening."""

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as e:
                self._error = e
                self._started.set()
                return
            self._started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="zerobus-emulator", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self.endpoint

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop_async(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
