"""Baseline for the normalizer: a bare consume-decode-encode-produce loop, as its own process.

`python -m bench.bare_normalizer <bootstrap> <input topic> <output topic> <group>`

confluent-kafka + fastavro with the same schemas (otbus_core.codec.AvroCodec, as the services
use it): each raw reading batch (columnar) is decoded, each reading becomes one tag record (a
minimal mapping: fixed context, the last path segment as name, ids from the batch's first id),
encoded and produced, keyed by path. No
transactions, no CloudEvents headers, no dead letters; the services' producer settings
(idempotent, acks=all, lz4); offsets auto-committed. Runs until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from confluent_kafka import Consumer, KafkaError
from confluent_kafka import Producer as KafkaProducer

from otbus_core.codec import AvroCodec
from otbus_core.ids import uuid7_seq
from otbus_core.producer import PRODUCER_DEFAULTS
from otbus_core.raw import NONE, unpack_values
from otbus_core.schemas import RAW_READING_BATCH, TAG_RECORD

_TYPES = {bool: "BOOLEAN", int: "INT64", float: "DOUBLE", str: "STRING", type(None): "NULL"}


def main() -> int:
    bootstrap, in_topic, out_topic, group = sys.argv[1:5]
    tenant = out_topic.split(".", 1)[0]
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    codec = AvroCodec()
    schema = codec.schemas.latest(TAG_RECORD)
    prefix, _ = codec.header(TAG_RECORD, out_topic)
    encode = codec.encode_with
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "fetch.max.bytes": 52_428_800,
            "queued.max.messages.kbytes": 131_072,
        }
    )
    producer = KafkaProducer({**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap})
    produce = producer.produce
    consumer.subscribe([in_topic])
    while not stop:
        for msg in consumer.consume(5000, 0.05):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    print(f"consumer error: {err}", file=sys.stderr)
                continue
            batch = codec.decode(msg.value(), RAW_READING_BATCH)
            source_id, protocol = batch["source_id"], batch["protocol"]
            tags, values, codes = batch["tags"], unpack_values(batch), batch["quality_codes"]
            times, units, received = batch["source_times"], batch["units"], batch["received_time"]
            ids = uuid7_seq(batch["first_id"], len(tags))
            for i, tag in enumerate(tags):
                name = tag.rsplit("/", 1)[-1]
                path = f"plant1/production/line1/{source_id}/value/{name}"
                value = values[i]
                rid = ids[i]
                rec = {
                    "event_id": rid,
                    "tenant": tenant,
                    "path": path,
                    "site": "plant1",
                    "area": "production",
                    "line": "line1",
                    "equipment": source_id,
                    "signal_type": "value",
                    "tag_name": name,
                    "value": value,
                    "data_type": _TYPES.get(type(value), "STRING"),
                    "unit": units[i] or None if units else None,
                    "quality": "GOOD",
                    "quality_code": None if codes[i] == NONE else codes[i],
                    "source_time": received if times[i] == NONE else times[i],
                    "ingest_time": received,
                    "source_id": source_id,
                    "protocol": protocol,
                    "source_tag": tag,
                    "raw_event_id": rid,
                }
                data = encode(prefix, schema, rec)
                while True:
                    try:
                        produce(out_topic, data, path)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
    producer.flush(30)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
