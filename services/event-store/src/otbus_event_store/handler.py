"""The event store's batch handler: messages -> stored events -> one durable write."""

from __future__ import annotations

import functools
import json
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple, cast

import msgspec
from confluent_kafka import Message

from otbus_core.codec import AVRO_CONTENT_TYPE, AvroCodec, single_object_prefix
from otbus_core.dlq import dead_letter_from_message
from otbus_core.envelope import SPECVERSION, is_utf8
from otbus_core.exceptions import DecodeError, InvalidTenant
from otbus_core.kafka import position
from otbus_core.records import Outcome
from otbus_core.schemas import TAG_RECORD
from otbus_core.topics import tenant_of_topic
from otbus_event_store.tagjson import TagJson
from otbus_event_store.writer import NULL, EventWriter, escape

__all__ = ["STAGE", "StoreHandler", "to_copy_line"]

STAGE = "event-store"
_NOT_EVENTS = re.compile(r"\.ot\.(raw\.[a-z]+|dlq)\.v[0-9]+$")
_json = msgspec.json.Encoder()

# the headers of the row's first ten columns, in column order (see writer.COLUMNS)
_HEADERS = (
    "ce_id",
    "ce_time",
    "ce_tenant",
    "ce_type",
    "ce_source",
    "ce_subject",
    "ce_correlationid",
    "ce_causationid",
    "ce_dataschema",
    "content-type",
)
_REQUIRED = ((0, "ce_id"), (4, "ce_source"), (3, "ce_type"), (2, "ce_tenant"))
_SPEC = SPECVERSION.encode()
_AVRO = AVRO_CONTENT_TYPE.encode()


def _payload(content_type: bytes, value: bytes | None, codec: AvroCodec, tags: TagJson | None) -> bytes:
    if tags is not None and content_type == _AVRO and value:
        made = tags.json(value)
        if made is not None:
            return made
    if b"json" in content_type:
        try:
            return json.dumps(json.loads(value or b"null")).encode()
        except (ValueError, RecursionError) as e:
            raise DecodeError(f"content-type {_text(content_type)} but the value is not JSON: {e}") from e
    record: Any = codec.decode_any(value)
    return _json.encode(record)


class _Topic(NamedTuple):
    tenant: bytes
    field: bytes  # the topic as a COPY field


@functools.lru_cache(maxsize=4096)
def _topic(topic: str) -> _Topic:
    return _Topic(tenant_of_topic(topic).encode(), escape(topic.encode()))


def to_copy_line(msg: Message, codec: AvroCodec, tags: TagJson | None = None) -> bytes:
    """The event's row as a line of COPY text, made from the header bytes as they came.

    Refused here (DecodeError): a message without the CloudEvents attributes the row needs,
    another spec version, a `ce_tenant` that is not the topic's tenant, a header that is not
    UTF-8, an RFC 3339 time without a zone (PostgreSQL would read it in its session zone), a
    value that is not what its content type says. `ce_id` and `ce_time` themselves are
    checked by PostgreSQL (uuid, timestamptz): a row it refuses is found by the writer.
    `tags` reads tag records' JSON straight from their bytes (see `tagjson`).
    """
    name, partition, offset = position(msg)
    topic = _topic(name)
    # consumed header values are bytes (None for a header without a value); last one wins
    headers = dict(cast("list[tuple[str, bytes | None]] | None", msg.headers()) or ())
    cols = [headers.get(k) for k in _HEADERS]
    spec = headers.get("ce_specversion")
    missing = [name for i, name in _REQUIRED if cols[i] is None]
    if spec is None or missing:
        raise DecodeError(f"CloudEvents header(s) missing: {', '.join(([] if spec else ['ce_specversion']) + missing)}")
    if spec != _SPEC:
        raise DecodeError(f"ce_specversion {_text(spec)!r} is not {SPECVERSION}")
    if cols[2] != topic.tenant:
        raise DecodeError(f"ce_tenant {_text(cols[2])!r} does not match the topic's tenant {topic.tenant.decode()!r}")
    t = cols[1] or b""
    if not (t[-1:] in (b"Z", b"z") or t[-6:-5] in (b"+", b"-")):
        raise DecodeError(f"ce_time {_text(t)!r} is not an RFC 3339 time with a zone")
    content_type = cols[9]
    if content_type is None:
        cols[9] = content_type = _AVRO
    head = b"\t".join([NULL if c is None else c for c in cols])
    if b"\\" in head or b"\n" in head or b"\r" in head or head.count(b"\t") != 9:
        head = b"\t".join([NULL if c is None else escape(c) for c in cols])
    try:
        head.decode()
    except UnicodeDecodeError:
        bad = next(i for i, c in enumerate(cols) if c is not None and not is_utf8(c))
        raise DecodeError(f"header {_HEADERS[bad]} is not UTF-8") from None
    payload = _payload(content_type, msg.value(), codec, tags)
    if b"\\" in payload:  # JSON text has no tab or line break: only backslashes to escape
        payload = payload.replace(b"\\", b"\\\\")
    return b"%b\t%b\t%b\t%d\t%d\n" % (head, payload, topic.field, partition, offset)


def _text(b: bytes | None) -> str:
    return "" if b is None else b.decode(errors="replace")


class StoreHandler:
    """Messages to rows, written in chunks: while PostgreSQL takes in one chunk (COPY, on the
    writer's thread), the next ones are made here, so Python and the database work side by
    side. Two chunks may wait for the writer, so a chunk that takes Python longer to make
    than the one before does not leave PostgreSQL idle.
    Every chunk is committed before `handle` returns, so offsets are still committed only
    after everything is durable; a crash in between redelivers rows the store already has."""

    def __init__(self, codec: AvroCodec, writer: EventWriter, chunk: int = 1000, in_flight: int = 2) -> None:
        self.codec = codec
        self.writer = writer
        self.chunk = chunk
        self.in_flight = in_flight  # chunks handed to the writer and not yet settled, at most
        self.skipped = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-store-copy")
        schema = codec.schemas.latest(TAG_RECORD)
        self._tags = TagJson(schema, single_object_prefix(schema))

    def handle(self, messages: list[Message]) -> Outcome:
        out = Outcome()
        pending: deque[tuple[Future[list[tuple[int, str]]], list[Message]]] = deque()
        refused: list[Message] = []
        reasons: list[str] = []

        def settle() -> None:
            done, origin = pending.popleft()
            for i, why in done.result():
                refused.append(origin[i])
                reasons.append(why)

        try:
            # the first chunk is a quarter of the others: PostgreSQL waits only for that one
            first = max(1, self.chunk // 4)
            starts = [0, *range(first, len(messages), self.chunk)]
            for start, end in zip(starts, [*starts[1:], len(messages)], strict=True):
                lines, origin = self._lines(messages[start:end], out)
                if lines:
                    pending.append((self._pool.submit(self.writer.write, lines), origin))
                while len(pending) > self.in_flight:
                    settle()
            while pending:
                settle()
        finally:
            for done, _ in pending:  # after a failure: never leave writes running behind it
                done.exception()
        for msg, reason in zip(refused, reasons, strict=True):
            out.dead.append(dead_letter_from_message(msg, stage=STAGE, reason=reason, error_type="DatabaseRefused"))
        return out

    def _lines(self, messages: list[Message], out: Outcome) -> tuple[list[bytes], list[Message]]:
        lines: list[bytes] = []
        origin: list[Message] = []
        codec = self.codec
        for msg in messages:
            try:
                if _is_not_events(position(msg)[0]):
                    self.skipped += 1  # a broad extra-topics pattern matched a raw or DLQ topic
                    continue
                lines.append(to_copy_line(msg, codec, self._tags))
            except (DecodeError, InvalidTenant) as e:
                out.dead.append(dead_letter_from_message(msg, stage=STAGE, reason=str(e), error_type=type(e).__name__))
                continue
            origin.append(msg)
        return lines, origin


@functools.lru_cache(maxsize=4096)
def _is_not_events(topic: str) -> bool:
    return _NOT_EVENTS.search(topic) is not None
