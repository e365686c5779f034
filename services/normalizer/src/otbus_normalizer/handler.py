"""The normalizer's batch handler: raw reading batches in, tag records and dead letters out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from confluent_kafka import Message

from otbus_core.codec import AVRO_CONTENT_TYPE, AvroCodec, SplitEncoder
from otbus_core.dlq import dead_letter_from_message
from otbus_core.envelope import SPECVERSION, TYPE_TAG, Envelope, envelope_of, micros_to_rfc3339
from otbus_core.exceptions import DecodeError, InvalidTenant, PoisonRecord
from otbus_core.records import Outcome, OutRecord
from otbus_core.schemas import RAW_READING_BATCH, TAG_RECORD
from otbus_core.topics import tags_topic
from otbus_normalizer.fastpath import FastTags
from otbus_normalizer.mapping import TagMapper, raw_columns

__all__ = ["STAGE", "NormalizerHandler"]

STAGE = "normalizer"
_TAG_PARTS = ("tenant", "path", "site", "area", "line", "equipment", "signal_type", "tag_name")
_TAG_SOURCE = ("source_id", "protocol", "source_tag")


class NormalizerHandler:
    def __init__(self, codec: AvroCodec, mapper: TagMapper) -> None:
        self.codec = codec
        self.mapper = mapper
        # a tag's path parts and its source are the same in every reading of it: encoded once;
        # data types and qualities are a handful, and a batch's readings share an ingest time
        repeating = ("data_type", "quality", "ingest_time")
        schema = codec.schemas.latest(TAG_RECORD)
        self._encoder = SplitEncoder(schema, [_TAG_PARTS, _TAG_SOURCE], repeating)
        self._fast = FastTags(mapper, schema)

    def handle(self, messages: list[Message]) -> Outcome:
        out = Outcome()
        for msg in messages:
            try:
                tenant, env = envelope_of(msg)
                batch = self.codec.decode(msg.value(), RAW_READING_BATCH)
            except (DecodeError, InvalidTenant) as e:
                out.dead.append(dead_letter_from_message(msg, stage=STAGE, reason=str(e), error_type=type(e).__name__))
                continue
            self._map_batch(msg, tenant, env, batch, out)
        return out

    def _map_batch(self, msg: Message, tenant: str, env: Envelope, batch: dict[str, Any], out: Outcome) -> None:
        topic = tags_topic(tenant)
        prefix, uri = self.codec.header(TAG_RECORD, topic)
        source_id, protocol = batch["source_id"], batch["protocol"]
        ctx = self.mapper.context_for(source_id, batch["context"])
        source = f"/otbus/{protocol}/{source_id}"
        correlation = env.correlationid or env.id
        encode = self._encoder.encode
        # the CloudEvents attributes every record of this batch shares, then four of its own
        same = [
            ("ce_specversion", SPECVERSION),
            ("ce_source", source),
            ("ce_type", TYPE_TAG),
            ("ce_tenant", tenant),
            ("content-type", AVRO_CONTENT_TYPE),
            ("ce_dataschema", uri),
            ("ce_correlationid", correlation),
        ]
        try:
            cols = raw_columns(batch)
        except PoisonRecord as e:
            out.dead.append(dead_letter_from_message(msg, stage=STAGE, reason=e.reason, error_type="PoisonRecord"))
            return
        outputs = out.outputs

        def slow(i: int) -> None:
            """Reading i the general way (to_tag, SplitEncoder): what the fast path leaves."""
            reading = cols.reading(i)
            try:
                rec = self.mapper.to_tag(tenant, source_id, protocol, ctx, reading)
            except PoisonRecord as e:
                # The dead letter points at the raw record (topic, partition, offset, item) and
                # carries only this reading, so a large batch with bad readings stays small.
                dead = dead_letter_from_message(
                    msg,
                    stage=STAGE,
                    reason=f"reading {i} ({reading.tag!r:.120}): {e.reason}",
                    error_type="PoisonRecord",
                    item_index=i,
                    source_id=source_id,
                )
                out.dead.append(replace(dead, original_value=reading.as_json()))
                return
            path = rec["path"]
            headers = [
                *same,
                ("ce_id", rec["event_id"]),
                ("ce_time", micros_to_rfc3339(rec["source_time"])),
                ("ce_subject", path),
                ("ce_causationid", rec["raw_event_id"]),
            ]
            outputs.append(OutRecord(topic, prefix + encode(rec), path, headers))

        self._fast.write(tenant, source_id, protocol, ctx, cols, topic, prefix, same, outputs, slow)
