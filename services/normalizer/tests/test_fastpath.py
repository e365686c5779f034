"""The fast path writes exactly what the general path (to_tag, then fastavro) writes."""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Message
from fastavro import schemaless_reader

from otbus_core.codec import AvroCodec
from otbus_core.envelope import ce_headers, micros_to_rfc3339
from otbus_core.ids import uuid7, uuid7_block
from otbus_core.raw import NONE, pack_values
from otbus_core.records import OutRecord
from otbus_core.schemas import RAW_READING_BATCH, TAG_RECORD
from otbus_normalizer.fastpath import FastTags
from otbus_normalizer.handler import NormalizerHandler
from otbus_normalizer.mapping import PathTemplate, RawColumns, TagMapper

TAGS = [
    "[default]Line1/Temp",
    "[default]Line1/Pump/Pressure",
    "ns=2;s=Motor.Speed",
    "Zähler/Ölstand",
    "plain",
    "a" * 200,
    "",
    "   ",
    "x/y/z/flow rate",
]
DECLARED = ["", "Float8", "double", "Int4", "int64", "Boolean", "String", "weird", "NULL", " float ", "DOUBLE"]
VALUES: list[Any] = [
    1.5,
    0.0,
    -3.25,
    math.nan,
    math.inf,
    -math.inf,
    7,
    0,
    1,
    -(2**63),
    2**63 - 1,
    True,
    False,
    "abc",
    "12",
    "1.5",
    "true",
    "",
    None,
    1e308,
]
QUALITIES = ["", "Good", "Bad", "GOOD_DATA", "Uncertain", "good"]
CODES = [NONE, NONE, 192, 0, 24, 1 << 40, -5]
PROTOCOLS = ["http", "opcua", "mqtt", "sparkplug", "modbus"]
NOW = 1_763_900_000_000_000


def _time(rng: random.Random) -> int:
    return rng.choice([NONE, NOW, NOW + rng.randrange(10**7), -(10**15), 2**62, NOW - 1, 0])


def _batch(rng: random.Random, n: int) -> dict[str, Any]:
    values = [rng.choice(VALUES) for _ in range(n)]
    units: list[str] = [rng.choice(["", "degC", "bar", "µm"]) for _ in range(n)] if rng.random() < 0.5 else []
    attrs: list[dict[str, str]] = []
    if rng.random() < 0.3:
        attrs = [rng.choice([{}, {}, {"unit": "kPa"}, {"signal_type": "Pressure"}]) for _ in range(n)]
    return {
        "source_id": rng.choice(["plc-1", "plc 2", "ns=3;s=Ünit"]),
        "protocol": rng.choice(PROTOCOLS),
        "context": rng.choice([{}, {"site": "Plant A", "line": "L/2"}]),
        "first_id": uuid7_block(n),
        "received_time": NOW + 5,
        "tags": [rng.choice(TAGS) for _ in range(n)],
        **pack_values(values),
        "data_types": [rng.choice(DECLARED) for _ in range(n)],
        "qualities": [rng.choice(QUALITIES) for _ in range(n)],
        "quality_codes": [rng.choice(CODES) for _ in range(n)],
        "source_times": [_time(rng) for _ in range(n)],
        "units": units,
        "attributes": attrs,
    }


def _message(codec: AvroCodec, batch: dict[str, Any], offset: int) -> Message:
    tenant = "acme"
    topic = f"{tenant}.ot.raw.{batch['protocol']}.v1"
    value = codec.encode(RAW_READING_BATCH, batch, topic)
    headers = ce_headers(uuid7(), "/test", "otbus.raw", tenant, micros_to_rfc3339(NOW), correlationid="corr-1")
    encoded = [(k, v.encode()) for k, v in headers]
    return Message(topic=topic, partition=0, offset=offset, key=b"k", value=value, headers=encoded)


class _AllSlow:
    """Sends every reading the general way: the reference the fast path is held to."""

    def write(self, *args: Any) -> None:
        cols: RawColumns = args[4]
        slow: Callable[[int], None] = args[-1]
        for i in range(len(cols.tags)):
            slow(i)


def _handlers() -> tuple[NormalizerHandler, NormalizerHandler]:
    mapper = TagMapper(PathTemplate("{site}/{area}/{line}/{equipment}/{signal_type}/{tag_name}"), {"site": "p1"}, {})
    fast = NormalizerHandler(AvroCodec(), mapper)
    ref = NormalizerHandler(AvroCodec(), TagMapper(mapper.template, {"site": "p1"}, {}))
    ref._fast = _AllSlow()  # type: ignore[assignment]
    return fast, ref


def _plain(rec: OutRecord) -> tuple[Any, ...]:
    headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in rec.headers]
    return rec.topic, rec.value, rec.key, headers


def test_random_batches_equal_the_general_path() -> None:
    rng = random.Random(20261124)
    codec = AvroCodec()
    fast, ref = _handlers()
    fast_count = 0
    for k in range(300):
        msg = _message(codec, _batch(rng, rng.randrange(1, 40)), k)
        got, want = fast.handle([msg]), ref.handle([msg])
        assert [_plain(r) for r in got.outputs] == [_plain(r) for r in want.outputs]
        assert [(d.reason, d.item_index, d.original_value) for d in got.dead] == [
            (d.reason, d.item_index, d.original_value) for d in want.dead
        ]
        fast_count += sum(isinstance(dict(r.headers)["ce_id"], bytes) for r in got.outputs)
    assert fast_count > 1000  # the fast path did most of them (its ids are bytes)


def test_records_decode_with_fastavro_alone() -> None:
    codec = AvroCodec()
    fast, _ = _handlers()
    rng = random.Random(7)
    schema = codec.schemas.latest(TAG_RECORD).fast
    batch = _batch(rng, 30)
    batch.update(attributes=[], **pack_values([float(i) for i in range(30)]), data_types=["Float8"] * 30)
    batch.update(tags=[f"Line1/Temp{i % 3}" for i in range(30)], source_times=[NOW + i for i in range(30)])
    out = fast.handle([_message(codec, batch, 0)])
    assert len(out.outputs) == 30 and not out.dead
    for i, r in enumerate(out.outputs):
        prefix, _ = codec.header(TAG_RECORD, r.topic)
        assert r.value.startswith(prefix)
        rec = schemaless_reader(io.BytesIO(r.value[len(prefix) :]), schema, None)
        assert rec["value"] == float(i) and rec["data_type"] == "DOUBLE" and rec["path"] == r.key
        assert rec["event_id"].encode() == dict(r.headers)["ce_id"]


def test_a_changed_schema_layout_is_refused() -> None:
    codec = AvroCodec()
    mapper = TagMapper(PathTemplate("{tag_name}"), {}, {})
    with pytest.raises(ValueError, match="layout"):
        FastTags(mapper, codec.schemas.latest(RAW_READING_BATCH))
