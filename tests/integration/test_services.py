"""The first slice's services one by one: bad input, the query API, isolation, shutdown."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from confluent_kafka import Producer

from otbus_core.codec import AvroCodec
from otbus_core.envelope import TYPE_RAW_READINGS, Envelope
from otbus_core.ids import uuid7
from otbus_core.topics import dlq_topic, raw_topic
from otbus_ingest_http.publish import RawPublisher
from otbus_ingest_http.validation import EventValidator
from tests.support import Infra, Stack, headers, ignition_events, read_topic, wait_until

pytestmark = pytest.mark.integration
V = EventValidator(1024, 16384, 100_000)


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[Stack]:
    s = Stack.build(infra, n_tenants=3).start()
    yield s
    s.stop()


def _dlq(stack: Stack, tenant: str, n: int) -> list:
    wait_until(lambda: len(read_topic(stack.infra.kafka_bootstrap, dlq_topic(tenant))) >= n, 30, f"{n} dead letters")
    return read_topic(stack.infra.kafka_bootstrap, dlq_topic(tenant))


def test_api_key_required(stack: Stack) -> None:
    url = f"{stack.ingest.url}/system/zerobus/ingest/batch"
    body = json.dumps(list(ignition_events(1)))
    assert httpx.post(url, content=body).status_code == 401
    assert httpx.post(url, content=body, headers={"X-API-Key": "wrong-key-0000000000"}).status_code == 401
    t = stack.tenants[0]
    ok = httpx.post(f"{url}?api_key={stack.keys[t]}", content=body)  # the Ignition script's way
    assert ok.status_code == 200 and ok.json()["accepted"] == 1
    bearer = httpx.post(url, content=body, headers={"Authorization": f"Bearer {stack.keys[t]}"})
    assert bearer.status_code == 200


def test_bad_bodies_get_clear_errors_and_reach_the_dlq(stack: Stack) -> None:
    t = stack.tenants[1]
    r = stack.post_batch(t, b"[{not json")
    assert r.status_code == 400 and "invalid JSON" in r.json()["detail"] and r.json()["field"] == "body"
    r = stack.post_batch(t, b'{"tagPath": "x"}')  # an object where a batch is expected
    assert r.status_code == 400
    r = stack.post_batch(t, json.dumps({"tagPath": "a", "value": "x" * 20_000}), path="/system/zerobus/ingest")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "value"
    r = stack.post_batch(t, json.dumps({"value": 1}), path="/api/v1/ingest")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tagPath"
    r = stack.post_batch(t, json.dumps([{"tagPath": "ok", "value": 1}, [1, 2], {"tagPath": "n", "value": {"a": 1}}]))
    assert r.status_code == 200
    assert r.json()["accepted"] == 1 and r.json()["dropped"] == 2
    assert [e["index"] for e in r.json()["errors"]] == [1, 2]
    dead = _dlq(stack, t, 6)
    assert len(dead) == 6
    reasons = [headers(m)["otbus_dlq_reason"] for m in dead]
    assert all(headers(m)["otbus_dlq_stage"] == "ingest-http" for m in dead)
    assert any("invalid JSON" in x for x in reasons) and any(x.startswith("tagPath:") for x in reasons)
    originals = [AvroCodec().decode(m.value(), "dead_letter")["original_value"] for m in dead]
    assert b"[{not json" in originals and b"[1, 2]" in originals


def test_body_over_limit_is_413(stack: Stack) -> None:
    big = b"[" + b'{"tagPath": "a", "value": 1},' * 700_000 + b'{"tagPath": "a"}]'  # ~20 MB > 16 MiB
    r = stack.post_batch(stack.tenants[1], big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_diagnostics_and_health_as_in_the_seed(stack: Stack) -> None:
    d = httpx.get(f"{stack.ingest.url}/system/zerobus/diagnostics").json()
    assert d["received"] >= d["accepted"] > 0 and d["dropped"] > 0 and d["last_send"]
    assert httpx.get(f"{stack.ingest.url}/system/zerobus/health").json()["status"] == "ok"
    for svc in (stack.ingest, stack.normalizer, stack.store):
        assert httpx.get(f"{svc.url}/healthz").status_code == 200
        ready = httpx.get(f"{svc.url}/readyz").json()
        assert ready["ready"] and all(c["ok"] for c in ready["checks"].values())
        assert "otbus_" in httpx.get(f"{svc.url}/metrics").text


def test_normalizer_dead_letters_poison_and_the_partition_moves_on(stack: Stack) -> None:
    t = stack.tenants[2]
    topic = raw_topic(t, "http")
    p = Producer({"bootstrap.servers": stack.infra.kafka_bootstrap})
    env = Envelope.new(source="/test", type=TYPE_RAW_READINGS, tenant=t)
    p.produce(topic, b"not avro at all", b"s", headers=env.headers(), partition=0)  # not Avro
    p.produce(topic, AvroCodec().encode("raw_reading_batch", _batch(), topic), b"s", partition=0)  # no headers
    wrong = env.with_(tenant="someone-else")
    p.produce(
        topic,
        AvroCodec().encode("raw_reading_batch", _batch(), topic),
        b"s",
        headers=wrong.headers(),
        partition=0,
    )
    # a header that is not UTF-8, and a batch whose first_id is not a UUID
    p.produce(
        topic,
        AvroCodec().encode("raw_reading_batch", _batch(), topic),
        b"s",
        headers=[*env.headers(), ("ce_subject", b"\xff\xfe")],
        partition=0,
    )
    p.produce(
        topic,
        AvroCodec().encode(
            "raw_reading_batch",
            {
                **_batch(),
                "first_id": "zz",
                "tags": ["a"],
                "value_kinds": b"\x02",
                "longs": [1],
                "data_types": [""],
                "qualities": [""],
                "quality_codes": [0],
                "source_times": [0],
            },
            topic,
        ),
        b"s",
        headers=env.headers(),
        partition=0,
    )
    # and a good batch behind them on the same partition
    good = RawPublisher(AvroCodec(), 1000, {}).records(
        t, "ignition", V.decode_batch(json.dumps(list(ignition_events(5, prefix="AfterPoison"))).encode())[0], "c"
    )
    for r in good:
        p.produce(r.topic, r.value, r.key, headers=list(r.headers), partition=0)
    p.flush(10)
    wait_until(lambda: stack.stored_count(t) >= 5, 60, "events behind the poison stored")
    dead = [m for m in _dlq(stack, t, 5) if headers(m)["otbus_dlq_stage"] == "normalizer"]
    assert len(dead) == 5
    h = [headers(m) for m in dead]
    assert all(x["otbus_dlq_topic"] == topic for x in h)
    assert any("unknown value encoding" in x["otbus_dlq_reason"] for x in h)
    assert any("ce_tenant" in x["otbus_dlq_reason"] for x in h)
    assert any("not UTF-8" in x["otbus_dlq_reason"] for x in h)
    assert any("first_id" in x["otbus_dlq_reason"] for x in h)
    originals = [AvroCodec().decode(m.value(), "dead_letter") for m in dead]
    assert any(r["original_value"] == b"not avro at all" and r["original_topic"] == topic for r in originals)


def _batch() -> dict:
    empty: list[object] = []
    return {
        "source_id": "s",
        "protocol": "http",
        "context": {},
        "first_id": uuid7(),
        "received_time": 0,
        "value_kinds": b"",
        **{k: empty for k in ("tags", "data_types", "qualities", "quality_codes", "source_times")},
    }


def test_query_filters_pagination_and_isolation(stack: Stack) -> None:
    t, other = stack.tenants[0], stack.tenants[1]
    r = stack.post_batch(t, list(ignition_events(120, prefix="Query")), path="/api/v1/ingest/batch")
    assert r.status_code == 200

    def mine() -> int:
        return sum(1 for e in stack.all_events(t) if e["payload"]["source_tag"].startswith("[default]Query/"))

    wait_until(lambda: mine() == 120, 60, "the 120 events stored")

    # keyset pagination, both orders, no duplicates, no gaps
    for order in ("asc", "desc"):
        seen: list[str] = []
        cursor = None
        while True:
            q = {"limit": 25, "order": order, **({"cursor": cursor} if cursor else {})}
            body = stack.query(t, **q).json()
            seen += [e["event_id"] for e in body["events"]]
            cursor = body["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) >= 120
        times = [e["time"] for e in stack.all_events(t, order=order)]
        assert times == sorted(times, reverse=order == "desc")

    sample = stack.all_events(t)[0]
    by_corr = stack.all_events(t, correlation_id=sample["correlation_id"])
    assert by_corr and all(e["correlation_id"] == sample["correlation_id"] for e in by_corr)
    assert stack.all_events(t, type="otbus.ot.nothing.v1") == []
    prefix = "plant1/production/line1/default/machine3/"
    sub = stack.all_events(t, subject_prefix=prefix)
    assert sub and all(e["subject"].startswith(prefix) for e in sub)
    assert stack.all_events(t, subject_prefix="plant1/production/line1/default/machine3%") == []  # LIKE escaped
    src = stack.all_events(t, source="/otbus/http/ignition")
    assert len(src) >= 120
    now = datetime.now(UTC)
    assert stack.all_events(t, since=(now + timedelta(hours=1)).isoformat()) == []

    # another tenant's token sees none of these
    assert not {e["event_id"] for e in stack.all_events(other)} & {e["event_id"] for e in stack.all_events(t)}

    # statistics and status
    s = stack.query(t, "/api/v1/statistics").json()
    assert (
        s["by_type"]["otbus.ot.tag.v1"] == s["total"] >= 120 and sum(m["count"] for m in s["per_minute"]) == s["total"]
    )

    def caught_up() -> dict | None:
        st = stack.query(t, "/api/v1/status").json()
        parts = st["consumer"]["partitions"]
        done = parts and st["consumer"]["lag"] == 0 and sum(p["committed"] or 0 for p in parts) > 0
        return st if done else None

    st = wait_until(caught_up, 30, "status showing the committed offsets with no lag")
    assert st["database"]["ok"] and st["consumer"]["enabled"] and not st["consumer"]["failing"]
    assert all(p["topic"] == f"{t}.ot.tags.v1" for p in st["consumer"]["partitions"])


def test_query_api_bad_input(stack: Stack) -> None:
    t = stack.tenants[0]
    assert httpx.get(f"{stack.store.url}/api/v1/events").status_code == 401
    assert stack.query(t, limit=0).status_code == 422
    assert stack.query(t, limit=100_000).status_code == 422
    r = stack.query(t, cursor="not-a-cursor")
    assert r.status_code == 422 and "cursor" in r.text
    assert stack.query(t, since="yesterday").status_code == 422
    assert stack.query(t, since="2026-01-01T00:00:00").status_code == 422  # no time zone
    assert stack.query(t, order="sideways").status_code == 422
    assert stack.query(t, "/api/v1/statistics", since="2020-01-01T00:00:00Z").status_code == 422


def test_row_level_security_holds_without_the_filter(stack: Stack) -> None:
    t, other = stack.tenants[0], stack.tenants[1]
    with psycopg.connect(stack.infra.database_url) as c:
        c.execute("SET ROLE otbus_query")
        c.execute("SELECT set_config('otbus.tenant', %s, false)", (t,))
        tenants = {r[0] for r in c.execute("SELECT DISTINCT tenant FROM otbus_events").fetchall()}
        assert tenants == {t}
        c.execute("SELECT set_config('otbus.tenant', '', false)")
        assert c.execute("SELECT count(*) FROM otbus_events").fetchone() == (0,)
        c.execute("SELECT set_config('otbus.tenant', %s, false)", (other,))
        rows = c.execute("SELECT count(*) FROM otbus_events WHERE tenant = %s", (t,)).fetchone()
        assert rows == (0,)


def test_the_query_path_runs_under_row_level_security(stack: Stack) -> None:
    """The app's per-request transaction (role + tenant) hides other tenants even without a filter."""
    from sqlalchemy import create_engine, func, select, text

    from otbus_event_store.query import EventQueries

    t, other = stack.tenants[0], stack.tenants[1]
    engine = create_engine(stack.infra.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        q = EventQueries(engine)
        with engine.begin() as conn:
            q._tenant_tx(conn, t)
            assert conn.execute(text("SELECT current_user")).scalar() == "otbus_query"
            tenants = conn.execute(select(q.table.c.tenant).distinct()).scalars().all()
            assert tenants == [t]
        with engine.begin() as conn:
            q._tenant_tx(conn, other)
            mine = conn.execute(select(func.count()).select_from(q.table).where(q.table.c.tenant == t)).scalar()
            assert mine == 0
    finally:
        engine.dispose()


def test_streamed_body_over_limit_is_413(stack: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(20_000):
            yield b'{"tagPath": "a", "value": "' + b"x" * 1000 + b'"},'
        yield b'{"tagPath": "a"}]'

    r = httpx.post(
        f"{stack.ingest.url}/system/zerobus/ingest/batch",
        content=chunks(),
        headers={"X-API-Key": stack.keys[stack.tenants[0]]},
        timeout=60,
    )
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_identifier_headers_are_checked(stack: Stack) -> None:
    t = stack.tenants[0]
    body = json.dumps(list(ignition_events(1)))
    for name, value in (("X-Request-Id", "x" * 200), ("X-Otbus-Source", "a b/c")):
        r = httpx.post(
            f"{stack.ingest.url}/system/zerobus/ingest/batch",
            content=body,
            headers={"X-API-Key": stack.keys[t], name: value},
        )
        assert r.status_code == 400 and r.json()["field"] == name.lower()
    url = f"{stack.ingest.url}/system/zerobus/ingest/batch"
    r = httpx.post(url, params={"source": "a b/c"}, content=body, headers={"X-API-Key": stack.keys[t]})
    assert r.status_code == 422 and r.json()["field"] == "source"
    r = httpx.post(url, params={"source": "line-7"}, content=body, headers={"X-API-Key": stack.keys[t]})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert httpx.get(url).status_code == 405  # not a POST: FastAPI answers
    paths = httpx.get(f"{stack.ingest.url}/openapi.json").json()["paths"]
    for prefix in ("/api/v1/ingest", "/system/zerobus/ingest"):
        assert "post" in paths[prefix] and "post" in paths[f"{prefix}/batch"]
        params = {p["name"] for p in paths[f"{prefix}/batch"]["post"]["parameters"]}
        assert {"source", "api_key", "x-api-key", "authorization"} <= params


def test_sigterm_finishes_and_exits_cleanly(stack: Stack) -> None:
    stack.normalizer.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    started = time.monotonic()
    code = stack.normalizer.proc.wait(30)  # type: ignore[union-attr]
    assert code == 0 and time.monotonic() - started < 30
    assert "normalizer stopped" in stack.normalizer.log_tail()
    stack.normalizer.start()
