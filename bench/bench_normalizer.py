"""Benchmark 2: the normalizer draining a preloaded raw topic, against a bare loop.

N readings (`BENCH_NORMALIZER_N`, 200k; 100k quick) are preloaded into a fresh tenant's raw
topic in records of 1000 readings, encoded by ingest-http's own RawPublisher. Then:

* baseline: `bench/bare_normalizer.py` (consume, decode, one encoded tag record per reading,
  produce; no transactions, no headers) drains the same topic into another tenant's tags topic;
* the real `python -m otbus_normalizer` (transactional) drains it into the tenant's tags topic.

Each figure is N / (time from the moment the consumer group has the raw topic's partitions
assigned to the moment the output topic's committed (read_committed) count reaches N); the
process start-up and the group join are left out of both. The normalizer subscribes by
pattern to the raw topics of the tenants in OTBUS_TENANTS, set to the benchmark tenant only
(see bench/common.py), so it reads only the benchmark's input.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import (
    QUICK,
    CommittedCounter,
    CpuMeter,
    Entry,
    Infra,
    Service,
    admin,
    create_tenant_topics,
    delete_topics,
    failed_entry,
    foreign_topics,
    free_port,
    group_assigned,
    log,
    metrics,
    new_tenant,
    peak_rss_mb,
    produce_all,
    raw_records,
    run_alone,
    run_id,
    stop_all,
)
from otbus_core.topics import raw_topic, tags_topic

NAME = "normalizer"
UNIT = "events/s"
TARGET = "ratio >= 0.8 of a bare consume-decode-encode-produce loop (confluent-kafka + fastavro)"


def drain(
    inf: Infra,
    svc: Service,
    group: str,
    in_topic: str,
    out_topic: str,
    n: int,
    timeout: float = 300.0,
    before_stop: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Start `svc` and time it from group assignment until `out_topic` holds `n` committed records."""
    adm = admin(inf.kafka)
    parts = len(adm.list_topics(in_topic, timeout=10).topics[in_topic].partitions)
    counter = CommittedCounter(inf.kafka, out_topic)
    try:
        started = time.monotonic()
        svc.start()
        t0: float | None = None
        meter: CpuMeter | None = None
        next_check = 0.0
        deadline = started + timeout
        while counter.count < n:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{svc.name}: {counter.count} of {n} records after {timeout:.0f}s")
            if t0 is None and now >= next_check:
                if group_assigned(adm, group, in_topic, parts):
                    t0 = time.monotonic()
                    meter = CpuMeter(service=svc.pid)
                next_check = time.monotonic() + 0.05
            counter.poll(0.05)
            svc.check_alive()
        t1 = counter.last_at or time.monotonic()
        cpu = meter.read() if meter else {}
        if t0 is None or (counter.first_at is not None and counter.first_at < t0):
            t0 = min(t0 or t1, counter.first_at or t1)  # assignment seen late: first output bounds it
        end = time.monotonic() + 1.5  # anything past N would be a duplicate
        while time.monotonic() < end:
            counter.poll(0.1)
        seconds = t1 - t0
        cpu_us = cpu.get("service", 0) * seconds / n * 1e6
        if before_stop is not None:
            before_stop()
        rss = peak_rss_mb(svc.pid)
        return {
            "peak_rss_mb": rss,
            "records": counter.count,
            "duplicates": counter.count - n,
            "seconds": round(seconds, 3),
            "events_per_s": n / seconds,
            "join_s": round(t0 - started, 2),
            "first_output_after_s": round((counter.first_at or t1) - t0, 3),
            "cpu_cores": cpu,
            "service_cpu_us_per_event": round(cpu_us, 2),
        }
    finally:
        counter.close()
        svc.stop()


def run(inf: Infra) -> list[Entry]:
    n = int(os.environ.get("BENCH_NORMALIZER_N", "100000" if QUICK else "200000"))
    rid = run_id()
    created: list[str] = []
    try:
        tenant, base_tenant = new_tenant(), new_tenant()
        created += [tenant, base_tenant]
        create_tenant_topics(inf.kafka, tenant, base_tenant)
        src = raw_topic(tenant, "http")
        records = raw_records(tenant, n, 1000)
        secs = produce_all(inf.kafka, records)
        log(f"normalizer: preloaded {n} readings in {len(records)} raw records ({secs:.1f}s)")

        bare_group = f"bench-bare-normalizer-{rid}"
        bare = Service(
            "bare-normalizer",
            [
                sys.executable,
                "-m",
                "bench.bare_normalizer",
                inf.kafka,
                src,
                tags_topic(base_tenant),
                bare_group,
            ],
            ready_path=None,
        )
        b = drain(inf, bare, bare_group, src, tags_topic(base_tenant), n)
        log(f"bare loop: {b['events_per_s']:,.0f} events/s ({b['seconds']}s) cpu {b['cpu_cores']}")

        group = f"bench-normalizer-{rid}"
        port = free_port()
        real = Service.module(
            "normalizer",
            "otbus_normalizer",
            {
                **inf.env(),
                "OTBUS_GROUP_ID": group,
                "OTBUS_TENANTS": tenant,
                "OTBUS_INSTANCE_ID": f"bench-{rid}",
                "OTBUS_LOG_LEVEL": "WARNING",
                "OTBUS_DEFAULT_CONTEXT": json.dumps(
                    {"site": "plant1", "area": "production", "line": "line1", "equipment": "default"}
                ),
            },
            port,
        )
        real.ready_path = None
        holder: dict[str, Any] = {}

        def grab_metrics() -> None:
            m = metrics(real.url)
            holder["batches"] = m.get('otbus_batch_seconds_count{stage="normalizer"}')
            holder["batch_seconds_sum"] = m.get('otbus_batch_seconds_sum{stage="normalizer"}')

        r = drain(inf, real, group, src, tags_topic(tenant), n, before_stop=grab_metrics)
        r.update(holder)
        if r.get("batches"):
            r["mean_batch_s"] = round(r["batch_seconds_sum"] / r["batches"], 3)
            r["readings_per_transaction"] = round(n / r["batches"])
        log(f"normalizer: {r['events_per_s']:,.0f} events/s ({r['seconds']}s) cpu {r['cpu_cores']}")
    except Exception as e:
        log(f"{NAME} failed: {e}")
        return [failed_entry(NAME, UNIT, TARGET, e)]
    finally:
        stop_all()
        delete_topics(inf, created)
    value, base = r["events_per_s"], b["events_per_s"]
    ok = r["duplicates"] == 0 and b["duplicates"] == 0
    details = {
        "readings": n,
        "readings_per_raw_record": 1000,
        "raw_records": len(records),
        "tenant": tenant,
        "foreign_topics_assigned": foreign_topics(group),
        "service": r,
        "bare": b,
    }
    if not ok:
        details["error"] = "duplicates in the output (count past N)"
    return [Entry(NAME, UNIT, value, base, TARGET, ok and value / base >= 0.8, None, None, details)]


if __name__ == "__main__":
    run_alone(NAME, run)
