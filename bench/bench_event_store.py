"""Benchmark 3: the event store draining a preloaded tags topic into PostgreSQL, against plain COPY.

N tag records (`BENCH_STORE_N`, 200k; 100k quick), made by the normalizer's own handler, are
preloaded into a fresh tenant's tags topic. Then:

* baseline: the same rows (built from the preloaded records by the event store's own
  `to_copy_line`, before the clock starts, as Python tuples) are written with plain psycopg
  `COPY` (`cursor.copy` + `write_row`) into `otbus_events` itself (same partitions, indexes
  and defaults) under a tenant of their own, in transactions of 5000 rows (the store's batch
  size); no Kafka. The baseline rows are deleted afterwards;
* the real `python -m otbus_event_store` drains the topic; the figure is N / (time from the
  moment its consumer group has the topic's partitions assigned to the moment its committed
  offsets reach the topic's end, which it commits only after the database commit), confirmed
  by `SELECT count(*) FROM otbus_events WHERE tenant = ...` as the superuser (row-level
  security applies to the query role only).

The store subscribes by pattern to the tags topics of the tenants in OTBUS_TENANTS, set to the
benchmark tenant only (see bench/common.py).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from confluent_kafka import Message
from confluent_kafka import Producer as KafkaProducer
from psycopg import sql

from bench.common import (
    QUICK,
    CpuMeter,
    Entry,
    Infra,
    Service,
    count_rows,
    create_tenant_topics,
    delete_topics,
    drain_timed,
    failed_entry,
    foreign_topics,
    free_port,
    log,
    metrics,
    new_tenant,
    peak_rss_mb,
    run_alone,
    run_id,
    stop_all,
    tag_records,
)
from otbus_core.codec import AvroCodec
from otbus_core.ids import uuid7_batch
from otbus_core.producer import PRODUCER_DEFAULTS
from otbus_core.topics import tags_topic
from otbus_event_store.handler import to_copy_line
from otbus_event_store.writer import COLUMNS

NAME = "event_store"
UNIT = "events/s"
TARGET = "ratio >= 0.7 of plain PostgreSQL COPY of the same rows (same indexes)"
BATCH = 5000


def preload(inf: Infra, tenant: str, n: int, distinct: int = 20_000) -> list[tuple[object, ...]]:
    """Produce `n` tag records to the tenant's tags topic; return the rows the store will write.

    `distinct` records are made by the normalizer's handler; the rest repeat them with a fresh
    UUIDv7 `ce_id` each (the store's key is the header id), which keeps the preparation quick.
    The rows are the event store's own `to_copy_line` of each record, with the partition
    and offset Kafka gave it, as tuples of Python values.
    """
    codec = AvroCodec()
    made = tag_records(tenant, min(n, distinct))
    templates = [
        _values(
            to_copy_line(
                Message(
                    topic=r.topic, partition=0, offset=0, key=_bytes(r.key), value=r.value, headers=_header_bytes(r)
                ),
                codec,
            )
        )
        for r in made
    ]
    ids = uuid7_batch(n)
    where: list[tuple[int, int] | None] = [None] * n
    failed: list[Any] = []
    p = KafkaProducer({**PRODUCER_DEFAULTS, "bootstrap.servers": inf.kafka})

    def delivered(i: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(err)
            else:
                where[i] = (msg.partition(), msg.offset())

        return cb

    for i in range(n):
        r = made[i % len(made)]
        headers: list[tuple[str, str | bytes | None]] = [(k, ids[i] if k == "ce_id" else v) for k, v in r.headers]
        while True:
            try:
                p.produce(r.topic, r.value, r.key, headers=headers, on_delivery=delivered(i))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    if p.flush(120) or failed:
        raise RuntimeError(f"preload failed: {failed[:1]}")
    rows = []
    for i in range(n):
        pos = where[i]
        assert pos is not None
        row = list(templates[i % len(templates)])
        row[0], row[12], row[13] = ids[i], pos[0], pos[1]
        rows.append(tuple(row))
    return rows


def _bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


def _header_bytes(r: Any) -> list[tuple[str, bytes | None]]:
    """Headers as a consumer sees them (values are bytes)."""
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in r.headers]


def _values(line: bytes) -> tuple[object, ...]:
    """A COPY text line back to Python values (the benchmark's records have nothing to unescape)."""
    assert b"\\" not in line, "benchmark rows are not expected to need escapes"
    fields = line.rstrip(b"\n").split(b"\t")
    return tuple(None if f == b"\\N" else f.decode() for f in fields)


def copy_baseline(inf: Infra, rows: list[tuple[object, ...]]) -> dict[str, Any]:
    tenant = new_tenant()  # the baseline's rows go into otbus_events under a tenant of their own
    rows = [(r[0], r[1], tenant, *r[3:]) for r in rows]
    cols = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    copy = sql.SQL("COPY otbus_events ({}) FROM STDIN").format(cols)
    try:
        with psycopg.connect(inf.database_url, autocommit=False) as conn:
            meter = CpuMeter()
            t0 = time.perf_counter()
            for start in range(0, len(rows), BATCH):
                with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as cp:
                    for row in rows[start : start + BATCH]:
                        cp.write_row(row)
            seconds = time.perf_counter() - t0
            cpu = meter.read()
        with psycopg.connect(inf.admin_url, autocommit=True) as conn:
            got = count_rows(conn, tenant)
        assert got == len(rows), got
    finally:
        with psycopg.connect(inf.admin_url, autocommit=True) as conn:
            conn.execute("DELETE FROM otbus_events WHERE tenant = %s", (tenant,))
    return {
        "rows": len(rows),
        "seconds": round(seconds, 3),
        "events_per_s": len(rows) / seconds,
        "rows_per_transaction": BATCH,
        "cpu_cores": cpu,
        "postgres_cpu_us_per_event": round(cpu.get("postgres", 0) * seconds / len(rows) * 1e6, 2),
    }


def drain_store(inf: Infra, svc: Service, group: str, tenant: str, n: int, timeout: float = 300.0) -> dict[str, Any]:
    """Start the store and time it from group assignment until all `n` rows are in PostgreSQL.

    The store commits its Kafka offsets only after the database commit, so the end is seen
    from Kafka (the group's offsets reach the topic's end) and then confirmed with one
    count(*), rather than loading PostgreSQL with count(*) polls while it works.
    """
    with psycopg.connect(inf.admin_url, autocommit=True) as conn:
        try:
            d = drain_timed(
                inf,
                svc,
                group,
                tags_topic(tenant),
                lambda: f"{count_rows(conn, tenant)} of {n} rows",
                lambda: count_rows(conn, tenant) >= n,
                timeout,
            )
            m = metrics(svc.url)
            rss = peak_rss_mb(svc.pid)
            time.sleep(1.0)
            final = count_rows(conn, tenant)
        finally:
            svc.stop()
    started, t0, t1, cpu = d.started, d.t0, d.t1, d.cpu
    batches = m.get('otbus_batch_seconds_count{stage="event-store"}')
    batch_sum = m.get('otbus_batch_seconds_sum{stage="event-store"}')
    return {
        "peak_rss_mb": rss,
        "rows": final,
        "extra_rows": final - n,
        "seconds": round(t1 - t0, 3),
        "events_per_s": n / (t1 - t0),
        "join_s": round(t0 - started, 2),
        "batches": batches,
        "mean_batch_s": round(batch_sum / batches, 4) if batches and batch_sum else None,
        "cpu_cores": cpu,
        "service_cpu_us_per_event": round(cpu.get("service", 0) * (t1 - t0) / n * 1e6, 2),
        "postgres_cpu_us_per_event": round(cpu.get("postgres", 0) * (t1 - t0) / n * 1e6, 2),
    }


def run(inf: Infra) -> list[Entry]:
    n = int(os.environ.get("BENCH_STORE_N", "100000" if QUICK else "200000"))
    rid = run_id()
    created: list[str] = []
    try:
        tenant = new_tenant()
        created += [tenant]
        create_tenant_topics(inf.kafka, tenant)
        t = time.perf_counter()
        rows = preload(inf, tenant, n)
        log(f"event store: preloaded {n} tag records ({time.perf_counter() - t:.1f}s)")

        b = copy_baseline(inf, rows)
        del rows
        log(f"plain COPY: {b['events_per_s']:,.0f} rows/s ({b['seconds']}s) cpu {b['cpu_cores']}")

        group = f"bench-event-store-{rid}"
        port = free_port()
        svc = Service.module(
            "event-store",
            "otbus_event_store",
            {
                **inf.env(),
                "OTBUS_GROUP_ID": group,
                "OTBUS_TENANTS": tenant,
                "OTBUS_INSTANCE_ID": f"bench-{rid}",
                "OTBUS_API_TOKENS": json.dumps({f"bench-token-{uuid.uuid4().hex}": tenant}),
                "OTBUS_LOG_LEVEL": "WARNING",
            },
            port,
        )
        svc.ready_path = None
        r = drain_store(inf, svc, group, tenant, n)
        log(f"event store: {r['events_per_s']:,.0f} rows/s ({r['seconds']}s) cpu {r['cpu_cores']}")
    except Exception as e:
        log(f"{NAME} failed: {e}")
        return [failed_entry(NAME, UNIT, TARGET, e)]
    finally:
        stop_all()
        delete_topics(inf, created)
    value, base = r["events_per_s"], b["events_per_s"]
    ok = r["extra_rows"] == 0
    details: dict[str, Any] = {
        "rows": n,
        "tenant": tenant,
        "foreign_topics_assigned": foreign_topics(group),
        "service": r,
        "bare": b,
    }
    if not ok:
        details["error"] = "row count past N"
    return [Entry(NAME, UNIT, value, base, TARGET, ok and value / base >= 0.7, None, None, details)]


if __name__ == "__main__":
    run_alone(NAME, run)
