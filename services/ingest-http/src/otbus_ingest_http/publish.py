"""Tag events -> raw reading batches on `{tenant}.ot.raw.http.v1`; rejects -> `{tenant}.ot.dlq.v1`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from otbus_core.codec import AvroCodec, ColumnEncoder
from otbus_core.dlq import encode_dead_letter
from otbus_core.envelope import TYPE_RAW_READINGS, ce_headers, micros_to_rfc3339, now_micros
from otbus_core.ids import uuid7, uuid7_block
from otbus_core.raw import NONE, REPEATING_COLUMNS, encode_in_chunks, pack_values
from otbus_core.records import DeadLetter, OutRecord
from otbus_core.schemas import RAW_READING_BATCH
from otbus_core.topics import raw_topic
from otbus_ingest_http.validation import SECONDS_BELOW, ItemError, timestamp_micros

__all__ = ["STAGE", "RawPublisher"]

STAGE = "ingest-http"
PROTOCOL = "http"


class RawPublisher:
    def __init__(self, codec: AvroCodec, readings_per_message: int, contexts: Mapping[str, Mapping[str, str]]) -> None:
        self.codec = codec
        self.chunk = readings_per_message
        self.contexts = contexts
        self._encoder = ColumnEncoder(codec.schemas.latest(RAW_READING_BATCH), REPEATING_COLUMNS)

    def records(self, tenant: str, source_id: str, events: Sequence[Any], correlation_id: str) -> list[OutRecord]:
        """Raw batch records of at most `readings_per_message` readings and `MAX_RECORD_BYTES` each."""
        topic = raw_topic(tenant, PROTOCOL)
        prefix, uri = self.codec.header(RAW_READING_BATCH, topic)
        received = now_micros()
        headers = ce_headers(
            uuid7(),
            f"/otbus/{PROTOCOL}/{source_id}",
            TYPE_RAW_READINGS,
            tenant,
            micros_to_rfc3339(received),
            source_id,
            uri,
            correlation_id,
        )
        context = dict(self.contexts.get(source_id, {}))
        out: list[OutRecord] = []

        def encode(chunk: Sequence[Any]) -> bytes:
            return prefix + self._encoder.encode(_columns(source_id, context, received, chunk))

        for _chunk, value in encode_in_chunks(events, self.chunk, encode):
            if out:  # each record its own event id
                headers = [("ce_id", uuid7()) if k == "ce_id" else (k, v) for k, v in headers]
            out.append(OutRecord(topic, value, source_id, headers))
        return out

    def dead_letters(
        self, tenant: str, source_id: str, rejects: Sequence[tuple[int, Any, ItemError]], correlation_id: str
    ) -> list[OutRecord]:
        return [
            encode_dead_letter(
                self.codec,
                DeadLetter(
                    stage=STAGE,
                    reason=f"{err.field or 'event'}: {err.message}",
                    tenant=tenant,
                    error_type="ValidationError",
                    source_id=source_id,
                    item_index=index,
                    original_value=_item_bytes(item),
                    causation_id=correlation_id,
                ),
            )
            for index, item, err in rejects
        ]

    def unparseable(self, tenant: str, source_id: str, body: bytes, reason: str, correlation_id: str) -> OutRecord:
        return encode_dead_letter(
            self.codec,
            DeadLetter(
                stage=STAGE,
                reason=reason,
                tenant=tenant,
                error_type="InvalidBody",
                source_id=source_id,
                original_value=body,
                causation_id=correlation_id,
            ),
        )


def _columns(source_id: str, context: dict[str, str], received: int, chunk: Sequence[Any]) -> dict[str, Any]:
    # comprehensions with the common case inline: this runs for every event posted
    return {
        "source_id": source_id,
        "protocol": PROTOCOL,
        "context": context,
        "first_id": uuid7_block(len(chunk)),
        "received_time": received,
        "tags": [
            ev.tagPath if ev.tagPath[:1] == "[" or not ev.tagProvider else _tag(ev.tagPath, ev.tagProvider)
            for ev in chunk
        ],
        **pack_values([ev.value for ev in chunk]),
        "data_types": [ev.dataType or "" for ev in chunk],
        "qualities": [ev.quality or "" for ev in chunk],
        "quality_codes": [NONE if (c := ev.qualityCode) is None else c for ev in chunk],
        "source_times": [
            ev.timestamp * 1000
            if ev.timestamp.__class__ is int and ev.timestamp >= SECONDS_BELOW
            else _micros(ev.timestamp)
            for ev in chunk
        ],
    }


def _micros(ts: float | int | None) -> int:
    return NONE if ts is None else timestamp_micros(ts)


def _tag(path: str, provider: str | None) -> str:
    """Ignition's full tag path: `[provider]path` (kept as is when the path already names one)."""
    if provider and not path.startswith("["):
        return f"[{provider}]{path}"
    return path


def _item_bytes(item: Any) -> bytes:
    try:
        return json.dumps(item, allow_nan=True, default=str).encode()
    except (TypeError, ValueError):
        return repr(item).encode()
