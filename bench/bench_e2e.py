"""Benchmark 4: end to end, HTTP post -> ingest-http -> normalizer -> event store -> queryable.

The three services run as processes (fresh consumer groups, OTBUS_TENANTS = the benchmark's
three fresh tenants only):

* warm-up: the latency load below for `BENCH_E2E_WARMUP_SECONDS` (20; 10 quick) on a tenant of
  its own, not measured (a freshly started broker is still compiling its transaction paths);
* latency (then, on the idle pipeline): `bench/poster.py` in `rate` mode posts 1,000 events/s
  (a batch of 50 every 50 ms, open loop) for `BENCH_E2E_LATENCY_SECONDS` (30; 15 quick); each
  batch's events carry its sequence number as value and the batch's send time is recorded.
  Latency of an event = its row's `stored_at` (set by PostgreSQL when the store's COPY
  transaction began) minus the batch's send time; p50/p99 over all events. `stored_at` is
  slightly earlier than the moment the row becomes visible (the commit), by the COPY and
  commit of that batch (milliseconds at this rate);
* sustained: `poster.py` in `governed` mode posts batches of 1000 over 4 connections as fast
  as the pipeline takes them, holding back while more than `BENCH_E2E_MAX_BACKLOG` (50,000)
  accepted events are not yet stored (estimated from the store group's committed offsets),
  for `BENCH_E2E_SECONDS` (60; 30 quick); then waits until every accepted event is a row.
  Figure = rows / (last row stored - first post). Events lost = accepted - rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from itertools import pairwise
from typing import Any

import psycopg

from bench.common import (
    OUT,
    QUICK,
    CaughtUp,
    CpuMeter,
    Entry,
    Infra,
    Service,
    admin,
    count_rows,
    create_tenant_topics,
    delete_topics,
    failed_entry,
    foreign_topics,
    free_port,
    group_assigned,
    log,
    new_tenant,
    peak_rss_mb,
    percentile,
    read_all,
    run_alone,
    run_id,
    stop_all,
    wait_until,
)
from otbus_core.codec import AvroCodec
from otbus_core.schemas import TAG_RECORD
from otbus_core.topics import raw_topic, tags_topic

SUSTAINED = "e2e_sustained"
LATENCY = "e2e_latency"
SUSTAINED_TARGET = ">= 30000 events/s sustained, 0 lost"
LATENCY_TARGET = "p99 < 250 ms post -> queryable at 1000 events/s"
PATH = "/system/zerobus/ingest/batch"


def _poster(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    out = OUT / f"poster-{cfg['mode']}-{uuid.uuid4().hex[:6]}.json"
    cfg = {**cfg, "out": str(out)}
    with (OUT / "logs" / "poster.log").open("ab") as f:
        subprocess.run(
            [sys.executable, "-m", "bench.poster", json.dumps(cfg)], check=True, timeout=timeout, stderr=f, stdout=f
        )
    r: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return r


def _wait_rows(conn: psycopg.Connection[Any], tenant: str, n: int, timeout: float, interval: float = 0.5) -> float:
    """Poll until `n` rows of `tenant` are stored; the time.time() it was seen. Raises on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = count_rows(conn, tenant)
        if got >= n:
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{got} of {n} events of {tenant} stored after {timeout:.0f}s")
        time.sleep(interval)


def _wait_drained(
    inf: Infra, conn: psycopg.Connection[Any], tenant: str, groups: tuple[str, str], n: int, timeout: float
) -> float:
    """The time.time() all `n` events of `tenant` were rows, seen from Kafka and confirmed by count(*).

    Drained = the normalizer's group is at the end of the raw topic and the store's group at
    the last stable offset of the tags topic (the store commits offsets after the database
    commit); then one count(*) confirms it. Cheaper for PostgreSQL than polling count(*).
    """
    raw = CaughtUp(inf.kafka, raw_topic(tenant, "http"))
    tags = CaughtUp(inf.kafka, tags_topic(tenant), slack=1)
    try:
        deadline = time.monotonic() + timeout
        last_count = 0.0
        while True:
            now = time.time()
            drained = raw(groups[0]) and tags(groups[1])
            if drained or time.monotonic() - last_count > 5:
                last_count = time.monotonic()
                got = count_rows(conn, tenant)
                if got >= n:
                    return now if drained else time.time()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{got} of {n} events of {tenant} stored after {timeout:.0f}s")
            time.sleep(0.1)
    finally:
        raw.close()
        tags.close()


def _rate_load(svcs: dict[str, Service], key: str, seconds: float) -> dict[str, Any]:
    """1,000 events/s (a batch of 50 every 50 ms, open loop) posted to ingest-http; the poster's report."""
    cfg = {
        "mode": "rate",
        "host": "127.0.0.1",
        "port": svcs["ingest"].port,
        "path": PATH,
        "key": key,
        "batch": 50,
        "rate": 1000,
        "duration": seconds,
    }
    return _poster(cfg, seconds + 120)


def warm_up(inf: Infra, svcs: dict[str, Service], key: str, tenant: str, seconds: float) -> None:
    """The latency load on a tenant of its own, not measured: a freshly started broker compiles
    its transaction and fetch paths (JIT) for the first minute and the services fill their
    caches; the figure is for a pipeline that has been running."""
    if seconds <= 0:
        return
    r = _rate_load(svcs, key, seconds)
    with psycopg.connect(inf.admin_url, autocommit=True) as conn:
        _wait_rows(conn, tenant, r["events"], 60, 0.2)
    log(f"e2e: warmed up with {r['events']} events over {seconds:.0f}s")


def latency(inf: Infra, svcs: dict[str, Service], key: str, tenant: str, seconds: float) -> Entry:
    meter = CpuMeter(**{k: v.pid for k, v in svcs.items()})
    r = _rate_load(svcs, key, seconds)
    cpu = meter.read()
    with psycopg.connect(inf.admin_url, autocommit=True) as conn:
        _wait_rows(conn, tenant, r["events"], 60, 0.2)
        rows = conn.execute(
            "SELECT (payload->>'value')::bigint, extract(epoch FROM stored_at)::float8 "
            "FROM otbus_events WHERE tenant = %s",
            (tenant,),
        ).fetchall()
    sent = r["sent"]
    lat = [(stored - sent[str(seq)]["t_sent"]) * 1000 for seq, stored in rows]
    stages = _stages(inf, tenant, sent, dict(rows), len(rows))
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    details = {
        "tenant": tenant,
        "events": len(lat),
        "posted_events": r["events"],
        "batches": r["batches"],
        "failed_batches": r["failed_batches"],
        "late_sends": r["late_sends"],
        "seconds": seconds,
        "p90_ms": percentile(lat, 90),
        "max_ms": max(lat) if lat else None,
        "min_ms": min(lat) if lat else None,
        "ingest_response_ms": r["response"],
        "cpu_cores": cpu,
        "stages_ms": stages,
        "method": "stored_at (PostgreSQL now() of the store's COPY transaction) - batch send time",
    }
    ok = p99 is not None and p99 < 250 and r["failed_batches"] == 0 and len(lat) == r["events"]
    log(f"e2e latency: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(lat)} events; cpu {cpu}")
    return Entry(LATENCY, "ms", p99, None, LATENCY_TARGET, ok, p50, p99, details)


def _stages(inf: Infra, tenant: str, sent: dict[str, Any], stored: dict[int, float], n: int) -> dict[str, Any]:
    """Where the time goes, per posted batch: post -> received by ingest-http (the tag record's
    `ingest_time`), -> produced by the normalizer (its Kafka timestamp), -> `stored_at`."""
    codec = AvroCodec()
    parts: dict[str, list[float]] = {"post_to_ingest": [], "ingest_to_normalized": [], "normalized_to_stored": []}
    seen: set[int] = set()
    slowest: list[tuple[float, ...]] = []
    t0 = min((v["t_sent"] for v in sent.values() if "t_sent" in v), default=0.0)
    for m in read_all(inf.kafka, tags_topic(tenant), n):
        rec = codec.decode(m.value(), TAG_RECORD)
        seq = rec["value"]
        if seq in seen or str(seq) not in sent or seq not in stored:
            continue
        seen.add(seq)
        ingest = rec["ingest_time"] / 1e6  # (the codec reads timestamps as microseconds)
        t_sent, normalized = sent[str(seq)]["t_sent"], m.timestamp()[1] / 1000
        times = [t_sent, ingest, normalized, stored[seq]]
        stage_ms = [(b - a) * 1000 for a, b in pairwise(times)]
        for part, ms in zip(parts.values(), stage_ms, strict=True):
            part.append(ms)
        total = (stored[seq] - t_sent) * 1000
        slowest.append((round(total, 1), round(t_sent - t0, 2), *(round(ms, 1) for ms in stage_ms)))
    out: dict[str, Any] = {
        k: {"p50": percentile(v, 50), "p99": percentile(v, 99), "max": max(v, default=None)} for k, v in parts.items()
    }
    out["slowest_total_at_s_then_stages_ms"] = sorted(slowest, reverse=True)[:8]
    return out


def sustained(
    inf: Infra, svcs: dict[str, Service], key: str, tenant: str, groups: tuple[str, str], seconds: float
) -> Entry:
    ingest = svcs["ingest"]
    max_backlog = int(os.environ.get("BENCH_E2E_MAX_BACKLOG", "50000"))
    cfg = {
        "mode": "governed",
        "host": "127.0.0.1",
        "port": ingest.port,
        "path": PATH,
        "key": key,
        "batch": 1000,
        "connections": 4,
        "duration": seconds,
        "max_backlog": max_backlog,
        "bootstrap": inf.kafka,
        "store_group": groups[1],
        "tags_topic": tags_topic(tenant),
        "partitions": 3,
    }
    meter = CpuMeter(**{k: v.pid for k, v in svcs.items()})
    r = _poster(cfg, seconds + 120)
    cpu_posting = meter.read()
    accepted = r["accepted"]
    with psycopg.connect(inf.admin_url, autocommit=True) as conn:
        try:
            t_done = _wait_drained(inf, conn, tenant, groups, accepted, 180)
        finally:
            stored = count_rows(conn, tenant)
    total_s = t_done - r["first_post"]
    value = stored / total_s
    series = r["series"]
    # the steady part: stored (estimate) growth between 20% and 100% of the posting window
    steady = None
    if len(series) > 4:
        a = next(s for s in series if s[0] >= seconds * 0.2)
        z = series[-1]
        if z[0] > a[0]:
            steady = (z[2] - a[2]) / (z[0] - a[0])
    lost = accepted - stored
    details = {
        "tenant": tenant,
        "accepted": accepted,
        "stored": stored,
        "lost": lost,
        "posting_s": round(r["last_post"] - r["first_post"], 2),
        "drain_s": round(t_done - r["last_post"], 2),
        "accepted_per_s": round(accepted / max(1e-9, r["last_post"] - r["first_post"])),
        "steady_stored_per_s_estimate": round(steady) if steady else None,
        "max_backlog_allowed": max_backlog,
        "max_backlog_seen": max((s[1] - s[2] for s in series), default=None),
        "requests": r["requests"],
        "failed_requests": r["failed_requests"],
        "ingest_response_ms": r["response"],
        "cpu_cores_while_posting": cpu_posting,
    }
    log(
        f"e2e sustained: {value:,.0f} events/s queryable ({stored} of {accepted} in {total_s:.1f}s, "
        f"steady ~{steady or 0:,.0f}/s); cpu {cpu_posting}"
    )
    return Entry(
        SUSTAINED, "events/s", value, None, SUSTAINED_TARGET, value >= 30_000 and lost == 0, None, None, details
    )


def run(inf: Infra) -> list[Entry]:
    lat_s = float(os.environ.get("BENCH_E2E_LATENCY_SECONDS", "15" if QUICK else "30"))
    sus_s = float(os.environ.get("BENCH_E2E_SECONDS", "30" if QUICK else "60"))
    warm_s = float(os.environ.get("BENCH_E2E_WARMUP_SECONDS", "10" if QUICK else "20"))
    rid = run_id()
    entries: list[Entry] = []
    created: list[str] = []
    try:
        t_warm, t_lat, t_sus = new_tenant(), new_tenant(), new_tenant()
        created += [t_warm, t_lat, t_sus]
        create_tenant_topics(inf.kafka, t_warm, t_lat, t_sus)
        keys = {t: f"bench-key-{uuid.uuid4().hex}" for t in (t_warm, t_lat, t_sus)}
        by_key = json.dumps({k: t for t, k in keys.items()})
        norm_group, store_group = f"bench-e2e-normalizer-{rid}", f"bench-e2e-store-{rid}"
        raws = [raw_topic(t, "http") for t in keys]
        tags = [tags_topic(t) for t in keys]
        common = {
            **inf.env(),
            "OTBUS_LOG_LEVEL": "WARNING",
            "OTBUS_INSTANCE_ID": f"bench-{rid}",
            "OTBUS_TENANTS": f"{t_warm}|{t_lat}|{t_sus}",
        }
        store = Service.module(
            "e2e-event-store",
            "otbus_event_store",
            {**common, "OTBUS_GROUP_ID": store_group, "OTBUS_API_TOKENS": by_key},
            free_port(),
        ).start()
        normalizer = Service.module(
            "e2e-normalizer",
            "otbus_normalizer",
            {
                **common,
                "OTBUS_GROUP_ID": norm_group,
                "OTBUS_DEFAULT_CONTEXT": json.dumps(
                    {"site": "plant1", "area": "production", "line": "line1", "equipment": "default"}
                ),
            },
            free_port(),
        ).start()
        ingest = Service.module(
            "e2e-ingest-http", "otbus_ingest_http", {**common, "OTBUS_API_KEYS": by_key}, free_port()
        ).start()
        adm = admin(inf.kafka)
        for group, topics in ((norm_group, raws), (store_group, tags)):
            for t in topics:

                def assigned(g: str = group, t: str = t) -> bool:
                    return group_assigned(adm, g, t, 3)

                wait_until(assigned, 60, f"{group} assigned {t}", 0.1)
        log("e2e: services up and assigned")
        svcs = {"ingest": ingest, "normalizer": normalizer, "store": store}
        foreign = foreign_topics(norm_group) + foreign_topics(store_group)

        def run_latency() -> Entry:
            warm_up(inf, svcs, keys[t_warm], t_warm, warm_s)
            entry = latency(inf, svcs, keys[t_lat], t_lat, lat_s)
            entry.details["warm_up_seconds"] = warm_s
            entry.details["tenants_written"] = [t_warm]  # its rows are ours too (bench/main.py checks)
            return entry

        def run_sustained() -> Entry:
            return sustained(inf, svcs, keys[t_sus], t_sus, (norm_group, store_group), sus_s)

        for name, fn in ((LATENCY, run_latency), (SUSTAINED, run_sustained)):
            try:
                entries.append(fn())
            except Exception as err:
                log(f"{name} failed: {err}")
                unit, target = ("ms", LATENCY_TARGET) if name == LATENCY else ("events/s", SUSTAINED_TARGET)
                entries.append(failed_entry(name, unit, target, err))
            for s in (store, normalizer, ingest):
                s.check_alive()
        rss = {k: peak_rss_mb(v.pid) for k, v in svcs.items()}
        for entry in entries:
            entry.details["foreign_topics_assigned"] = foreign
            entry.details["peak_rss_mb"] = rss
    except Exception as err:
        log(f"e2e failed: {err}")
        done = {entry.name for entry in entries}
        for n, u, t in ((LATENCY, "ms", LATENCY_TARGET), (SUSTAINED, "events/s", SUSTAINED_TARGET)):
            if n not in done:
                entries.append(failed_entry(n, u, t, err))
    finally:
        stop_all()
        delete_topics(inf, created)
    return entries


if __name__ == "__main__":
    run_alone("e2e", run)
