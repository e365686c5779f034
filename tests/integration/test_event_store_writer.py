"""The event-store writer against real PostgreSQL: COPY, idempotency, refused rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from otbus_core.ids import uuid7
from otbus_event_store.migrate import ensure_partitions, migrate
from otbus_event_store.writer import EventWriter, copy_line
from tests.support import Infra

pytestmark = pytest.mark.integration


def _event(
    tenant: str,
    i: int,
    payload: object = None,
    when: datetime | str | None = None,
    event_id: str | None = None,
    subject: str | None = None,
) -> bytes:
    return copy_line(
        (
            event_id or uuid7(),
            when or datetime.now(UTC),
            tenant,
            "otbus.ot.tag.v1",
            "/otbus/http/test",
            subject or f"a/b/{i}",
            "c",
            None,
            None,
            "application/avro",
            json.dumps(payload if payload is not None else {"i": i}),
            f"{tenant}.ot.tags.v1",
            0,
            i,
        )
    )


def _count(infra: Infra, tenant: str) -> int:
    with psycopg.connect(infra.database_admin_url) as c:
        row = c.execute("SELECT count(*) FROM otbus_events WHERE tenant = %s", (tenant,)).fetchone()
        assert row is not None
        return int(row[0])


def test_copy_then_redelivery_is_idempotent(infra: Infra, tenant: str) -> None:
    migrate(infra.database_url)
    ensure_partitions(infra.database_url, 2)
    w = EventWriter(infra.database_url)
    first = [_event(tenant, i) for i in range(100)]
    assert w.write(first) == []
    assert _count(infra, tenant) == 100
    # a redelivered batch overlapping the stored one, with new events too
    again = first[50:] + [_event(tenant, i) for i in range(100, 130)]
    assert w.write(again) == []
    assert _count(infra, tenant) == 130
    assert w.duplicates == 50
    # the same event twice within one batch
    dup = _event(tenant, 999)
    assert w.write([dup, dup]) == []
    assert _count(infra, tenant) == 131
    w.close()


def test_rows_postgres_refuses_are_returned_and_the_rest_written(infra: Infra, tenant: str) -> None:
    migrate(infra.database_url)
    w = EventWriter(infra.database_url)
    bad = _event(tenant, 1, payload={"s": "nul \u0000 inside"})  # jsonb cannot hold NUL
    bad_id = _event(tenant, 2, event_id="not-a-uuid")
    bad_time = _event(tenant, 3, when="2026-13-45T25:00:00Z")
    good = [_event(tenant, i) for i in range(4, 14)]
    refused = w.write([*good[:5], bad, bad_id, *good[5:], bad_time])
    assert [i for i, _ in refused] == [5, 6, 12]
    assert all("refused" in why for _, why in refused)
    assert _count(infra, tenant) == 10
    w.close()


def test_text_with_tabs_newlines_and_backslashes_round_trips(infra: Infra, tenant: str) -> None:
    migrate(infra.database_url)
    w = EventWriter(infra.database_url)
    subject = "line 1\nline\t2 \\ back\rslash"
    payload = {"s": "tab\there \\N not null", "u": "é 漢字"}
    assert w.write([_event(tenant, 1, payload=payload, subject=subject)]) == []
    with psycopg.connect(infra.database_admin_url) as c:
        row = c.execute("SELECT subject, payload FROM otbus_events WHERE tenant = %s", (tenant,)).fetchone()
    assert row == (subject, payload)
    w.close()


def test_old_and_future_events_land_in_the_default_partition(infra: Infra, tenant: str) -> None:
    migrate(infra.database_url)
    w = EventWriter(infra.database_url)
    old = _event(tenant, 1, when=datetime.now(UTC) - timedelta(days=400))
    future = _event(tenant, 2, when=datetime.now(UTC) + timedelta(days=400))
    assert w.write([old, future]) == []
    with psycopg.connect(infra.database_admin_url) as c:
        rows = c.execute("SELECT tableoid::regclass::text FROM otbus_events WHERE tenant = %s", (tenant,)).fetchall()
    assert {r[0] for r in rows} == {"otbus_events_default"}
    w.close()
