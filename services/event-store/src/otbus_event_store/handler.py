"""The event store's batch handler: messages -> stored events -> one durable write."""

from __future__ import annotations

import json
import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgspec
from confluent_kafka import Message

from otbus_core.codec import AvroCodec
from otbus_core.dlq import dead_letter_from_message
from otbus_core.envelope import Envelope, envelope_of
from otbus_core.exceptions import DecodeError, InvalidTenant
from otbus_core.kafka import position
from otbus_core.records import Outcome
from otbus_event_store.writer import EventWriter, StoredEvent

__all__ = ["STAGE", "StoreHandler", "to_stored_event"]

STAGE = "event-store"
_NOT_EVENTS = re.compile(r"\.ot\.(raw\.[a-z]+|dlq)\.v[0-9]+$")
_json = msgspec.json.Encoder()


def _payload(env: Envelope, value: bytes | None, codec: AvroCodec) -> str:
    ct = env.content_type or ""
    if "json" in ct:
        try:
            return json.dumps(json.loads(value or b"null"))
        except (ValueError, RecursionError) as e:
            raise DecodeError(f"content-type {ct} but the value is not JSON: {e}") from e
    record: Any = codec.decode_any(value)
    return _json.encode(record).decode()


def to_stored_event(msg: Message, codec: AvroCodec) -> StoredEvent:
    topic, partition, offset = position(msg)
    tenant, env = envelope_of(msg)
    # ce_id and ce_time are checked by PostgreSQL itself (uuid, timestamptz): a row it refuses
    # is found by the writer and dead-lettered. Only an RFC 3339 time without a zone, which
    # PostgreSQL would read in its session zone, is refused here.
    t = env.time
    if not t or not (t[-1] in "Zz" or t[-6:-5] in ("+", "-")):
        raise DecodeError(f"ce_time {t!r} is not an RFC 3339 time with a zone")
    return StoredEvent(
        event_id=env.id,
        time=t,
        tenant=tenant,
        type=env.type,
        source=env.source,
        subject=env.subject,
        correlation_id=env.correlationid,
        causation_id=env.causationid,
        dataschema=env.dataschema,
        content_type=env.content_type,
        payload=_payload(env, msg.value(), codec),
        topic=topic,
        partition=partition,
        offset=offset,
    )


class StoreHandler:
    """Messages to rows, written in chunks: while PostgreSQL takes in one chunk (COPY, on the
    writer's thread), the next is decoded here, so Python and the database work side by side.
    Every chunk is committed before `handle` returns, so offsets are still committed only
    after everything is durable; a crash in between redelivers rows the store already has."""

    def __init__(self, codec: AvroCodec, writer: EventWriter, chunk: int = 1000) -> None:
        self.codec = codec
        self.writer = writer
        self.chunk = chunk
        self.skipped = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-store-copy")

    def handle(self, messages: list[Message]) -> Outcome:
        out = Outcome()
        origin: dict[int, Message] = {}
        pending: Future[list[tuple[StoredEvent, str]]] | None = None
        refused: list[tuple[StoredEvent, str]] = []
        try:
            for start in range(0, len(messages), self.chunk):
                events = self._rows(messages[start : start + self.chunk], origin, out)
                if pending is not None:
                    refused += pending.result()
                pending = self._pool.submit(self.writer.write, events)
        finally:
            if pending is not None:
                refused += pending.result()  # never leave a write running behind a failure
        for ev, reason in refused:
            out.dead.append(
                dead_letter_from_message(origin[id(ev)], stage=STAGE, reason=reason, error_type="DatabaseRefused")
            )
        return out

    def _rows(self, messages: list[Message], origin: dict[int, Message], out: Outcome) -> list[StoredEvent]:
        events: list[StoredEvent] = []
        for msg in messages:
            if _NOT_EVENTS.search(position(msg)[0]):
                self.skipped += 1  # a broad extra-topics pattern matched a raw or DLQ topic
                continue
            try:
                ev = to_stored_event(msg, self.codec)
            except (DecodeError, InvalidTenant) as e:
                out.dead.append(dead_letter_from_message(msg, stage=STAGE, reason=str(e), error_type=type(e).__name__))
                continue
            origin[id(ev)] = msg
            events.append(ev)
        return events
