"""Tag events -> raw reading batches on `{tenant}.ot.raw.http.v1`; rejects -> `{tenant}.ot.dlq.v1`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from otbus_core.codec import AvroCodec
from otbus_core.dlq import encode_dead_letter
from otbus_core.envelope import TYPE_RAW_READINGS, Envelope, now_micros
from otbus_core.ids import uuid7_batch
from otbus_core.records import DeadLetter, OutRecord
from otbus_core.schemas import RAW_READING_BATCH
from otbus_core.topics import raw_topic
from otbus_ingest_http.validation import ItemError, timestamp_micros

__all__ = ["STAGE", "RawPublisher"]

STAGE = "ingest-http"
PROTOCOL = "http"


class RawPublisher:
    def __init__(self, codec: AvroCodec, readings_per_message: int, contexts: Mapping[str, Mapping[str, str]]) -> None:
        self.codec = codec
        self.chunk = readings_per_message
        self.contexts = contexts
        self._schema = codec.schemas.latest(RAW_READING_BATCH)
        self._headers: dict[str, tuple[str, bytes, str]] = {}

    def _target(self, tenant: str) -> tuple[str, bytes, str]:
        t = self._headers.get(tenant)
        if t is None:
            topic = raw_topic(tenant, PROTOCOL)
            prefix, uri = self.codec.header(RAW_READING_BATCH, topic)
            t = self._headers[tenant] = (topic, prefix, uri)
        return t

    def records(self, tenant: str, source_id: str, events: Sequence[Any], correlation_id: str) -> list[OutRecord]:
        topic, prefix, uri = self._target(tenant)
        received = now_micros()
        ids = uuid7_batch(len(events))
        context = dict(self.contexts.get(source_id, {}))
        out = []
        for start in range(0, len(events), self.chunk):
            readings = []
            for k in range(start, min(start + self.chunk, len(events))):
                ev = events[k]
                provider = ev.tagProvider
                readings.append(
                    {
                        "id": ids[k],
                        "tag": ev.tagPath,
                        "value": ev.value,
                        "data_type": ev.dataType,
                        "quality": ev.quality,
                        "quality_code": ev.qualityCode,
                        "source_time": timestamp_micros(ev.timestamp),
                        "received_time": received,
                        "unit": None,
                        "attributes": {"tagProvider": provider} if provider else {},
                    }
                )
            env = Envelope.new(
                source=f"/otbus/{PROTOCOL}/{source_id}",
                type=TYPE_RAW_READINGS,
                tenant=tenant,
                time_us=received,
                subject=source_id,
                dataschema=uri,
                correlationid=correlation_id,
            )
            batch = {"source_id": source_id, "protocol": PROTOCOL, "context": context, "readings": readings}
            out.append(OutRecord(topic, self.codec.encode_with(prefix, self._schema, batch), source_id, env.headers()))
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


def _item_bytes(item: Any) -> bytes:
    try:
        return json.dumps(item, allow_nan=True, default=str).encode()
    except (TypeError, ValueError):
        return repr(item).encode()
