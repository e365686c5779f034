"""HTTP -> Kafka -> normalizer -> event store -> query API, with real Kafka and PostgreSQL."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from otbus_core.codec import AvroCodec
from otbus_core.ids import uuid7_seq
from otbus_core.topics import dlq_topic, raw_topic, tags_topic
from tests.support import Infra, Stack, headers, ignition_events, read_topic, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[Stack]:
    s = Stack.build(infra, n_tenants=3).start()
    yield s
    s.stop()


def _invalid(i: int) -> tuple[dict[str, Any], str]:
    """An invalid item of one of several kinds, and the stage that must reject it."""
    kind = i % 5
    base = next(ignition_events(1, start=10_000_000 + i, prefix="Bad"))
    if kind == 0:
        del base["tagPath"]
        return base, "ingest-http"
    if kind == 1:
        base["timestamp"] = "yesterday"
        return base, "ingest-http"
    if kind == 2:
        base["value"] = float("nan")
        return base, "ingest-http"
    if kind == 3:
        base["tagPath"] = "x" * 5000
        return base, "ingest-http"
    base["value"], base["dataType"] = "not-a-number", "int"  # valid JSON, refused by the normalizer
    return base, "normalizer"


def test_10k_events_two_tenants_exactly_once_isolated_with_dlq(stack: Stack) -> None:
    a, b = stack.tenants[0], stack.tenants[1]
    rng = random.Random(7)
    sent: dict[str, dict[str, int]] = {a: {}, b: {}}  # tenant -> tagPath -> value
    invalid: dict[str, Counter[str]] = {a: Counter(), b: Counter()}
    total = 0
    n = 0
    while total < 10_000:
        tenant = a if n % 2 == 0 else b
        batch = list(ignition_events(250, start=total, prefix=f"Area{n % 3}"))
        for ev in batch:
            sent[tenant][ev["tagPath"]] = ev["value"]
        bad_here = []
        for _ in range(rng.randint(0, 3)):
            item, stage = _invalid(sum(sum(c.values()) for c in invalid.values()))
            invalid[tenant][stage] += 1
            bad_here.append(item)
        for item in bad_here:
            batch.insert(rng.randrange(len(batch) + 1), item)
        r = stack.post_batch(tenant, batch)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted"] == 250 + invalid_count_normalizer(bad_here)
        assert body["dropped"] == len(bad_here) - invalid_count_normalizer(bad_here)
        for err in body["errors"]:
            assert err["field"] in {"tagPath", "timestamp", "value"}, err
        total += 250
        n += 1

    for t in (a, b):
        wait_until(lambda t=t: stack.stored_count(t) >= len(sent[t]), 120, f"{t} events stored")
    for t, other in ((a, b), (b, a)):
        events = stack.all_events(t)
        paths = Counter(e["payload"]["source_tag"] for e in events)
        assert len(events) == len(sent[t]), "every valid event stored exactly once"
        assert set(paths) == set(sent[t]) and max(paths.values()) == 1
        assert not set(paths) & set(sent[other]), "a tenant sees only its own events"
        for e in events:
            p = e["payload"]
            assert e["tenant"] == t and p["tenant"] == t
            assert e["type"] == "otbus.ot.tag.v1"
            assert p["value"] == sent[t][p["source_tag"]]
            assert p["quality"] == "GOOD" and p["quality_code"] == 192 and p["data_type"] == "INT64"
            machine, sensor = p["source_tag"].split("/")[-2:]
            assert p["path"] == f"plant1/production/line1/default/{machine.lower()}/{sensor}"
            assert e["subject"] == p["path"]
            assert e["causation_id"] == p["raw_event_id"]

    codec = AvroCodec()
    for t in (a, b):
        dead = read_topic(stack.infra.kafka_bootstrap, dlq_topic(t))
        stages = Counter(headers(m)["otbus_dlq_stage"] for m in dead)
        assert stages == invalid[t], f"DLQ of {t} holds exactly the invalid events"
        for m in dead:
            rec = codec.decode(m.value(), "dead_letter")
            assert rec["reason"] and rec["original_value"]


def invalid_count_normalizer(items: list[dict[str, Any]]) -> int:
    return sum(1 for i in items if i.get("value") == "not-a-number")


def test_raw_and_tag_records_carry_the_envelope(stack: Stack) -> None:
    t = stack.tenants[2]
    r = stack.post_batch(t, list(ignition_events(3, prefix="Env")), path="/api/v1/ingest/batch")
    assert r.status_code == 200 and r.json() == {"accepted": 3, "dropped": 0, "errors": []}
    wait_until(lambda: len(read_topic(stack.infra.kafka_bootstrap, tags_topic(t))) == 3, 60, "tag records")
    raw = read_topic(stack.infra.kafka_bootstrap, raw_topic(t, "http"))
    tags = read_topic(stack.infra.kafka_bootstrap, tags_topic(t))
    assert len(raw) == 1
    rh = headers(raw[0])
    codec = AvroCodec()
    batch = codec.decode(raw[0].value(), "raw_reading_batch")
    reading_ids = set(uuid7_seq(batch["first_id"], len(batch["tags"])))
    assert batch["tags"] == [f"[default]Env/Machine{i % 7}/Sensor_{i}" for i in range(3)]
    for m in tags:
        h = headers(m)
        assert h["ce_specversion"] == "1.0" and h["ce_type"] == "otbus.ot.tag.v1" and h["ce_tenant"] == t
        assert h["ce_causationid"] in reading_ids
        assert h["ce_correlationid"] == rh["ce_correlationid"]
        assert h["content-type"] == "application/avro"
        assert m.key().decode() == h["ce_subject"]
        rec = codec.decode(m.value(), "tag_record")
        assert str(rec["event_id"]) == h["ce_id"]
