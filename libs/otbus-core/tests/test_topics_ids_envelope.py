from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest

from otbus_core.envelope import Envelope, micros_to_rfc3339
from otbus_core.exceptions import DecodeError, InvalidTenant
from otbus_core.ids import derive_uuid7, format_uuid, uuid7, uuid7_batch, uuid7_millis, uuid7_seq, uuid7_seq_derived
from otbus_core.topics import (
    dlq_topic,
    raw_topic,
    raw_topics_pattern,
    tags_topic,
    tags_topics_pattern,
    tenant_of_topic,
    validate_tenant,
)

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_topic_names() -> None:
    assert raw_topic("acme", "opcua") == "acme.ot.raw.opcua.v1"
    assert tags_topic("plant-7") == "plant-7.ot.tags.v1"
    assert dlq_topic("a") == "a.ot.dlq.v1"
    assert tenant_of_topic("plant-7.ot.tags.v1") == "plant-7"
    with pytest.raises(ValueError, match="protocol"):
        raw_topic("acme", "bacnet")


@pytest.mark.parametrize("bad", ["", "Acme", "-acme", "a" * 64, "ac me", "acme.x", "acme_1", "ä"])
def test_invalid_tenants(bad: str) -> None:
    with pytest.raises(InvalidTenant):
        validate_tenant(bad)
    with pytest.raises(InvalidTenant):
        tags_topic(bad)


def test_valid_tenants() -> None:
    for ok in ("a", "0", "acme-plant-1", "a" * 63):
        assert validate_tenant(ok) == ok


def test_subscription_patterns() -> None:
    raw, tags = re.compile(raw_topics_pattern()), re.compile(tags_topics_pattern())
    assert raw.match("acme.ot.raw.http.v1") and raw.match("a-1.ot.raw.sparkplug.v1")
    assert not raw.match("acme.ot.tags.v1") and not raw.match("acme.ot.raw.bacnet.v1")
    assert tags.match("acme.ot.tags.v1")
    assert not tags.match("acme.ot.dlq.v1") and not tags.match("acme.ot.raw.http.v1")


def test_uuid7_format_and_order() -> None:
    ids = [uuid7() for _ in range(2000)] + uuid7_batch(5000)
    assert all(UUID7.match(i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert abs(uuid7_millis(ids[-1]) - time.time() * 1000) < 5000


def test_derived_ids_are_deterministic_and_keep_the_millisecond() -> None:
    parent = uuid7()
    a, b = derive_uuid7(parent, "tag"), derive_uuid7(parent, "tag")
    assert a == b and UUID7.match(a)
    assert derive_uuid7(parent, "other") != a
    assert uuid7_millis(a) == uuid7_millis(parent)


def _one_by_one(first: str, count: int) -> list[str]:
    """A block's ids as they were first made: each id formatted on its own."""
    n = int(first.replace("-", ""), 16)
    counter = (((n >> 64) & 0xFFF) << 62) | (n & 0x3FFF_FFFF_FFFF_FFFF)
    base = (n >> 80 << 80) | (0x7 << 76) | (0x2 << 62)
    return [
        format_uuid(base | ((k >> 62) << 64) | (k & 0x3FFF_FFFF_FFFF_FFFF)) for k in range(counter, counter + count)
    ]


@pytest.mark.parametrize("low", [0, 5, 2**48 - 3, 2**48 - 1])  # the last two carry past the low 48 bits
def test_a_block_of_ids_is_formatted_at_once_as_one_by_one(low: int) -> None:
    first = format_uuid(int(uuid7().replace("-", ""), 16) >> 48 << 48 | low)
    assert uuid7_seq(first, 7) == _one_by_one(first, 7)
    ids, derived = uuid7_seq_derived(first, 7, "tag")
    assert ids == [i.encode() for i in _one_by_one(first, 7)]
    assert derived == [derive_uuid7(i, "tag").encode() for i in _one_by_one(first, 7)]


def test_a_first_id_of_more_than_128_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="128 bits"):
        uuid7_seq("1" + "0" * 20 + "f" * 12, 2)
    with pytest.raises(ValueError, match="128 bits"):
        uuid7_seq_derived("1" + "0" * 32, 2, "tag")


def test_envelope_headers_roundtrip() -> None:
    env = Envelope.new(
        source="/otbus/http/ignition",
        type="otbus.ot.tag.v1",
        tenant="acme",
        subject="a/b",
        correlationid="c1",
        causationid="c2",
        dataschema="urn:x",
    )
    names = [k for k, _ in env.headers()]
    assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_tenant", "content-type"} <= set(names)
    back = Envelope.from_headers([(k, v.encode()) for k, v in env.headers()])
    assert back == env


def test_envelope_missing_headers_named() -> None:
    with pytest.raises(DecodeError, match="ce_tenant"):
        Envelope.from_headers([("ce_specversion", b"1.0"), ("ce_id", b"x"), ("ce_source", b"s"), ("ce_type", b"t")])


def test_rfc3339_micros() -> None:
    us = 1_763_000_000_123_456
    s = micros_to_rfc3339(us)
    assert s == "2025-11-13T02:13:20.123456Z"
    back = datetime.fromisoformat(s)
    assert back.tzinfo is not None and back == datetime(2025, 11, 13, 2, 13, 20, 123456, tzinfo=UTC)
    assert micros_to_rfc3339(us + 1) == "2025-11-13T02:13:20.123457Z"  # the cached second is reused correctly
    assert micros_to_rfc3339(us + 1_000_000) == "2025-11-13T02:13:21.123456Z"


def test_subscription_restricted_to_some_tenants() -> None:
    only = re.compile(tags_topics_pattern("acme|plant-7"))
    assert only.match("acme.ot.tags.v1") and only.match("plant-7.ot.tags.v1")
    assert not only.match("acme2.ot.tags.v1") and not only.match("other.ot.tags.v1")
    assert not re.compile(raw_topics_pattern("acme")).match("xacme.ot.raw.http.v1")
