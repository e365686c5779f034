"""Dead letters: the original bytes, where they came from, the stage and the reason."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message

from otbus_core.codec import AvroCodec
from otbus_core.envelope import TYPE_DEAD_LETTER, Envelope, now_micros
from otbus_core.exceptions import InvalidTenant
from otbus_core.kafka import headers_of, position
from otbus_core.records import DeadLetter, OutRecord
from otbus_core.schemas import DEAD_LETTER
from otbus_core.topics import dlq_topic, tenant_of_topic

__all__ = ["SYSTEM_TENANT", "dead_letter_from_message", "encode_dead_letter"]

SYSTEM_TENANT = "otbus"
"""Where dead letters go whose tenant cannot be known (a topic outside the naming scheme)."""
_MAX_ORIGINAL = 900_000
_MAX_REASON_HEADER = 1000


def dead_letter_from_message(
    msg: Message,
    *,
    stage: str,
    reason: str,
    error_type: str | None = None,
    item_index: int | None = None,
    source_id: str | None = None,
) -> DeadLetter:
    topic, partition, offset = position(msg)
    try:
        tenant: str | None = tenant_of_topic(topic)
    except InvalidTenant:
        tenant = None
    headers = [(k, v if isinstance(v, bytes | None) else str(v).encode()) for k, v in headers_of(msg)]
    ce_id = next((v.decode() for k, v in headers if k == "ce_id" and v), None)
    key = msg.key()
    return DeadLetter(
        stage=stage,
        reason=reason,
        tenant=tenant,
        error_type=error_type,
        source_id=source_id,
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        item_index=item_index,
        original_key=key.encode() if isinstance(key, str) else key,
        original_value=msg.value(),
        original_headers=headers,
        causation_id=ce_id,
    )


def encode_dead_letter(codec: AvroCodec, dl: DeadLetter) -> OutRecord:
    tenant = dl.tenant or SYSTEM_TENANT
    topic = dlq_topic(tenant)
    value = dl.original_value
    reason = dl.reason
    if value is not None and len(value) > _MAX_ORIGINAL:
        reason = f"{reason} (original value of {len(value)} bytes truncated to {_MAX_ORIGINAL})"
        value = value[:_MAX_ORIGINAL]
    env = Envelope.new(
        source=f"otbus/{dl.stage}",
        type=TYPE_DEAD_LETTER,
        tenant=tenant,
        subject=dl.original_topic or dl.source_id,
        causationid=dl.causation_id,
    )
    record: dict[str, Any] = {
        "event_id": env.id,
        "stage": dl.stage,
        "reason": reason,
        "error_type": dl.error_type,
        "tenant": dl.tenant,
        "source_id": dl.source_id,
        "original_topic": dl.original_topic,
        "original_partition": dl.original_partition,
        "original_offset": dl.original_offset,
        "item_index": dl.item_index,
        "original_key": dl.original_key,
        "original_value": value,
        "original_headers": [{"key": k, "value": v} for k, v in dl.original_headers],
        "failed_time": now_micros(),
    }
    prefix, uri = codec.header(DEAD_LETTER, topic)
    env = env.with_(dataschema=uri)
    headers: list[tuple[str, str | bytes]] = [*env.headers()]
    headers.append(("otbus_dlq_stage", dl.stage))
    headers.append(("otbus_dlq_reason", reason[:_MAX_REASON_HEADER]))
    if dl.original_topic is not None:
        headers.append(("otbus_dlq_topic", dl.original_topic))
        headers.append(("otbus_dlq_partition", str(dl.original_partition)))
        headers.append(("otbus_dlq_offset", str(dl.original_offset)))
    if dl.item_index is not None:
        headers.append(("otbus_dlq_item", str(dl.item_index)))
    value_bytes = codec.encode_with(prefix, codec.schemas.latest(DEAD_LETTER), record)
    return OutRecord(topic, value_bytes, dl.original_key, headers)
