"""Benchmark of the zerobus-sink against the Zerobus SDK alone, both writing to the emulator.

The Zerobus emulator runs as its own process (as Databricks would be elsewhere), committing
to local Delta tables every 100 ms and acknowledging after each commit.

* throughput: N tag records (`BENCH_ZEROBUS_N`, 200k; 100k quick) are preloaded into a fresh
  tenant's tags topic.
  - baseline: the same records, already mapped to TagRow bytes before the clock starts, are
    written by the real SDK (sync API, one stream, `records_per_message` per ingest call as
    the sink sends them) straight to the emulator, then flushed: N / time. No Kafka, no decoding.
  - sink: `python -m otbus_zerobus_sink` drains the topic; N / (time from its group's
    assignment to its committed offsets reaching the topic's end; it commits only after
    Zerobus acknowledged), confirmed by the Delta table's row count.
* latency: records (encoded before the clock) produced at `BENCH_ZEROBUS_RATE` (10,000/s) for
  a while, the produce time of each kept by its event id; afterwards every Delta commit of the
  table is read back (the files each version added) and each row's latency is that commit's
  timestamp minus its produce time: Kafka -> Delta visible.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from confluent_kafka import Producer as KafkaProducer
from deltalake import DeltaTable

from bench.common import (
    QUICK,
    CpuMeter,
    Entry,
    Infra,
    Service,
    create_tenant_topics,
    delete_topics,
    drain_timed,
    failed_entry,
    free_port,
    log,
    metrics,
    new_tenant,
    peak_rss_mb,
    percentile,
    run_alone,
    run_id,
    stop_all,
    tag_records,
)
from otbus_core.codec import AvroCodec
from otbus_core.producer import PRODUCER_DEFAULTS
from otbus_core.schemas import TAG_RECORD
from otbus_core.topics import tags_topic

NAME = "zerobus_sink"
UNIT = "records/s"
TARGET = "ratio >= 0.8 of the Zerobus SDK writing the same records directly to the emulator"
LAT_NAME = "zerobus_latency"
LAT_TARGET = "Kafka -> Delta visible p99 < 2000 ms at 10,000 records/s"
CLIENT_ID, CLIENT_SECRET = "bench-sp", f"bench-{uuid.uuid4().hex}"
PER_MESSAGE = 2000


def start_emulator(data_dir: Path) -> tuple[Service, int]:
    port, grpc_port = free_port(), free_port()
    svc = Service.module(
        "zerobus-emulator",
        "otbus_zerobus_sink.emulator",
        {
            "OTBUS_EMULATOR_PORT": str(port),
            "OTBUS_EMULATOR_GRPC_PORT": str(grpc_port),
            "OTBUS_EMULATOR_DATA_DIR": str(data_dir),
            "OTBUS_EMULATOR_CLIENT_ID": CLIENT_ID,
            "OTBUS_EMULATOR_CLIENT_SECRET": CLIENT_SECRET,
            "OTBUS_EMULATOR_LOG_JSON": "false",
        },
        port,
    )
    svc.start()
    return svc, grpc_port


def create_table(emulator: Service, table: str) -> None:
    """Through the emulator's catalog API, as an operator creates the target before the sink runs."""
    import httpx

    from otbus_zerobus_sink.rows import TagRow
    from otbus_zerobus_sink.rowschema import create_table_request

    body = create_table_request(table, TagRow.DESCRIPTOR)
    r = httpx.post(f"{emulator.url}/api/2.1/unity-catalog/tables", json=body, timeout=10)
    if r.status_code != 201:
        raise RuntimeError(f"creating {table}: HTTP {r.status_code} {r.text}")


def delta_rows(data_dir: Path, table: str) -> int:
    path = data_dir / Path(*table.split("."))
    return DeltaTable(str(path)).count() if DeltaTable.is_deltatable(str(path)) else 0


def preload(inf: Infra, tenant: str, n: int, distinct: int = 20_000) -> list[bytes]:
    """Produce `n` tag records (repeating `distinct` templates); return their TagRow bytes."""
    from otbus_zerobus_sink.rows import tag_row

    codec = AvroCodec()
    made = tag_records(tenant, min(n, distinct))
    rows = [tag_row(codec.decode(r.value, TAG_RECORD)) for r in made]
    p = KafkaProducer({**PRODUCER_DEFAULTS, "bootstrap.servers": inf.kafka})
    for i in range(n):
        r = made[i % len(made)]
        while True:
            try:
                p.produce(r.topic, r.value, r.key, headers=list(r.headers))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    if p.flush(120):
        raise RuntimeError("preload not acknowledged")
    return [rows[i % len(rows)] for i in range(n)]


def sdk_baseline(grpc_port: int, emulator_url: str, table: str, rows: list[bytes]) -> dict[str, Any]:
    from zerobus import TableProperties, ZerobusSdk

    from otbus_zerobus_sink.rows import TagRow

    sdk = ZerobusSdk(f"http://127.0.0.1:{grpc_port}", emulator_url)
    stream = sdk.create_stream(CLIENT_ID, CLIENT_SECRET, TableProperties(table, TagRow.DESCRIPTOR), None)
    try:
        meter = CpuMeter()
        t0 = time.perf_counter()
        for i in range(0, len(rows), PER_MESSAGE):
            stream.ingest_records_offset(rows[i : i + PER_MESSAGE])
        stream.flush()
        seconds = time.perf_counter() - t0
        cpu = meter.read()
    finally:
        stream.close()
        del stream, sdk
    return {"rows": len(rows), "seconds": round(seconds, 3), "records_per_s": len(rows) / seconds, "cpu_cores": cpu}


def sink_service(inf: Infra, tenant: str, grpc_port: int, emulator_url: str, rid: str) -> tuple[Service, str]:
    group = f"bench-zerobus-{rid}"
    svc = Service.module(
        "zerobus-sink",
        "otbus_zerobus_sink",
        {
            **inf.env(),
            "OTBUS_GROUP_ID": group,
            "OTBUS_TENANTS": tenant,
            "OTBUS_INSTANCE_ID": f"bench-{rid}",
            "OTBUS_ZEROBUS_ENDPOINT": f"http://127.0.0.1:{grpc_port}",
            "OTBUS_WORKSPACE_URL": emulator_url,
            "OTBUS_CLIENT_ID": CLIENT_ID,
            "OTBUS_CLIENT_SECRET": CLIENT_SECRET,
            "OTBUS_LOG_LEVEL": "WARNING",
        },
        free_port(),
    )
    return svc, group


def drain(inf: Infra, svc: Service, group: str, tenant: str, n: int, data_dir: Path) -> dict[str, Any]:
    table = f"main.{tenant}.tag_events"
    d = drain_timed(inf, svc, group, tags_topic(tenant), lambda: f"{delta_rows(data_dir, table)} of {n} rows")
    m = metrics(svc.url)
    seconds = d.t1 - d.t0
    return {
        "rows_in_delta": delta_rows(data_dir, table),
        "seconds": round(seconds, 3),
        "records_per_s": n / seconds,
        "join_s": round(d.t0 - d.started, 2),
        "batches": m.get('otbus_batch_seconds_count{stage="zerobus-sink"}'),
        "peak_rss_mb": peak_rss_mb(svc.pid),
        "cpu_cores": d.cpu,
        "service_cpu_us_per_record": round(d.cpu.get("service", 0) * seconds / n * 1e6, 2),
    }


def latency(inf: Infra, svc: Service, tenant: str, data_dir: Path, rate: int, seconds: float) -> dict[str, Any]:
    """Produce at `rate` for `seconds` (records encoded before the clock, so the load generator
    costs a produce() call per record); each record's produce time is kept by its event id and
    compared with the Delta commit that made it visible."""
    codec = AvroCodec()
    templates = [codec.decode(r.value, TAG_RECORD) for r in tag_records(tenant, 2000)]
    topic = tags_topic(tenant)
    total = int(rate * seconds)
    ids = [str(uuid.uuid4()) for _ in range(total)]
    encoded: list[tuple[bytes, str]] = []
    for i, event_id in enumerate(ids):
        rec = dict(templates[i % len(templates)])
        rec["event_id"] = event_id
        encoded.append((codec.encode(TAG_RECORD, rec, topic), rec["path"]))
    table = f"main.{tenant}.tag_events"
    before = DeltaTable(str(data_dir / Path(*table.split(".")))).version()
    had = before_rows(data_dir, table, before)
    p = KafkaProducer({**PRODUCER_DEFAULTS, "bootstrap.servers": inf.kafka, "linger.ms": 5})
    tick = 0.01
    per_tick = max(1, int(rate * tick))
    produced_ms = [0.0] * total
    sent = 0
    t0 = time.monotonic()
    while sent < total:
        due = t0 + (sent // per_tick) * tick
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        now_ms = time.time() * 1000
        for value, key in encoded[sent : sent + per_tick]:
            p.produce(topic, value, key)
            produced_ms[sent] = now_ms
            sent += 1
        p.poll(0)
    achieved = sent / (time.monotonic() - t0)
    p.flush(30)
    deadline = time.monotonic() + 60
    while delta_rows(data_dir, table) < had + sent and time.monotonic() < deadline:
        time.sleep(0.2)
    svc.check_alive()
    sent_at = dict(zip(ids, produced_ms, strict=True))
    lat = commit_latencies(data_dir / Path(*table.split(".")), before, sent_at)
    return {"sent": sent, "achieved_rate": round(achieved), "rows_seen": len(lat), "latencies_ms": lat}


def before_rows(data_dir: Path, table: str, version: int) -> int:
    dt = DeltaTable(str(data_dir / Path(*table.split("."))), version=version)
    return dt.count()


def commit_latencies(path: Path, after_version: int, sent_at: dict[str, float]) -> list[float]:
    """For each row added after `after_version`: its commit's timestamp minus its produce time, in ms
    (the first copy of an event id only: a re-sent duplicate does not count as a second sample)."""
    dt = DeltaTable(str(path))
    history = {h["version"]: h["timestamp"] for h in dt.history()}
    out: list[float] = []
    seen: set[str] = set()
    prev = set(DeltaTable(str(path), version=after_version).file_uris())
    for v in range(after_version + 1, dt.version() + 1):
        files = set(DeltaTable(str(path), version=v).file_uris())
        committed_ms = history[v]
        for f in files - prev:
            for event_id in pq.read_table(f, columns=["event_id"]).column("event_id").to_pylist():
                produced = sent_at.get(event_id)
                if produced is not None and event_id not in seen:
                    seen.add(event_id)
                    out.append(committed_ms - produced)
        prev = files
    return out


def run(inf: Infra) -> list[Entry]:
    n = int(os.environ.get("BENCH_ZEROBUS_N", "100000" if QUICK else "200000"))
    rate = int(os.environ.get("BENCH_ZEROBUS_RATE", "10000"))
    lat_seconds = 8.0 if QUICK else 20.0
    rid = run_id()
    created: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="otbus-bench-delta-"))
    try:
        emulator, grpc_port = start_emulator(tmp)
        tenant = new_tenant()
        created.append(tenant)
        create_tenant_topics(inf.kafka, tenant)
        t = time.perf_counter()
        rows = preload(inf, tenant, n)
        log(f"zerobus: preloaded {n} tag records ({time.perf_counter() - t:.1f}s)")
        base_table = f"bench.base_{rid.replace('-', '_')}.rows"
        create_table(emulator, base_table)
        create_table(emulator, f"main.{tenant}.tag_events")
        b = sdk_baseline(grpc_port, emulator.url, base_table, rows)
        del rows
        log(f"zerobus SDK direct: {b['records_per_s']:,.0f} records/s ({b['seconds']}s) cpu {b['cpu_cores']}")
        svc, group = sink_service(inf, tenant, grpc_port, emulator.url, rid)
        r = drain(inf, svc, group, tenant, n, tmp)
        log(f"zerobus sink: {r['records_per_s']:,.0f} records/s ({r['seconds']}s) cpu {r['cpu_cores']}")
        lat = latency(inf, svc, tenant, tmp, rate, lat_seconds)
        svc.stop()
        emulator.stop()
    except Exception as e:
        log(f"{NAME} failed: {e}")
        return [failed_entry(NAME, UNIT, TARGET, e), failed_entry(LAT_NAME, "ms", LAT_TARGET, e)]
    finally:
        stop_all()
        delete_topics(inf, created)
    value, base = r["records_per_s"], b["records_per_s"]
    ok = r["rows_in_delta"] >= n
    details: dict[str, Any] = {"records": n, "records_per_message": PER_MESSAGE, "sink": r, "sdk_direct": b}
    if not ok:
        details["error"] = f"only {r['rows_in_delta']} of {n} rows in Delta"
    ms = lat.pop("latencies_ms")
    p50, p99 = (percentile(ms, 50), percentile(ms, 99)) if ms else (None, None)
    lat_ok = bool(ms) and lat["rows_seen"] >= lat["sent"] and p99 is not None and p99 < 2000
    lat["max_ms"] = round(max(ms), 1) if ms else None
    return [
        Entry(NAME, UNIT, value, base, TARGET, ok and value / base >= 0.8, None, None, details),
        Entry(LAT_NAME, "records/s", lat["achieved_rate"], None, LAT_TARGET, lat_ok, p50, p99, lat),
    ]


if __name__ == "__main__":
    run_alone(NAME, run)
