"""The event store's batch handler: messages -> stored events -> one durable write."""

from __future__ import annotations

import json
import re
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
    def __init__(self, codec: AvroCodec, writer: EventWriter) -> None:
        self.codec = codec
        self.writer = writer
        self.skipped = 0

    def handle(self, messages: list[Message]) -> Outcome:
        out = Outcome()
        events: list[StoredEvent] = []
        origin: dict[int, Message] = {}
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
        for ev, reason in self.writer.write(events):
            out.dead.append(
                dead_letter_from_message(origin[id(ev)], stage=STAGE, reason=reason, error_type="DatabaseRefused")
            )
        return out
