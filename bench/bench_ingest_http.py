"""Benchmark 1: ingest-http's batch endpoint against the bare uvicorn + msgspec endpoint.

The real service runs as `python -m otbus_ingest_http` (one process, uvloop + httptools); it
answers only after Kafka acknowledged the records (acks=all), so the figure includes
validation, Avro encoding and the produce round trip. The baseline is `bench/bare_asgi.py`:
a raw ASGI app that decodes the same body with msgspec and produces nothing.

Load: `wrk` (C, epoll; `apt-get install wrk`) with `bench/post.lua` posting one pre-built body
of `BENCH_HTTP_BATCH` (1000) Ignition events over `BENCH_HTTP_CONNECTIONS` (8) keep-alive
connections; without wrk, `bench/poster.py` in closed mode (separate process, asyncio streams).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec

from bench.common import (
    OUT,
    QUICK,
    CpuMeter,
    Entry,
    Infra,
    Service,
    create_tenant_topics,
    delete_topics,
    failed_entry,
    free_port,
    http_get,
    ignition_events,
    log,
    new_tenant,
    peak_rss_mb,
    run_alone,
    stop_all,
)

NAME = "ingest_http_batch"
UNIT = "events/s"
TARGET = ">= 200000 events/s and ratio >= 0.25 of the bare uvicorn+msgspec endpoint"
PATH = "/system/zerobus/ingest/batch"
LUA = Path(__file__).with_name("post.lua")


def load(port: int, body: Path, key: str | None, duration: float, connections: int) -> dict[str, Any]:
    """Closed-loop load on 127.0.0.1:`port`; requests, seconds and latency percentiles."""
    url = f"http://127.0.0.1:{port}{PATH}"
    if shutil.which("wrk"):
        threads = min(2, connections)
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--timeout", "30s"]
        env = {**os.environ, "BENCH_BODY": str(body), "BENCH_KEY": key or ""}
        proc = subprocess.run(
            [*cmd, "-s", str(LUA), url], env=env, text=True, capture_output=True, timeout=duration + 120
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        r = json.loads(line.removeprefix("BENCH_JSON "))
        errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
        return {
            "client": f"wrk -t{threads} -c{connections}",
            "requests": r["requests"],
            "duration_s": r["duration_us"] / 1e6,
            "errors": errors,
            "status_errors": r["status_errors"],
            "p50_ms": r["p50_us"] / 1000,
            "p90_ms": r["p90_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000,
            "max_ms": r["max_us"] / 1000,
        }
    out = OUT / f"poster-closed-{uuid.uuid4().hex[:6]}.json"
    cfg = {
        "mode": "closed",
        "host": "127.0.0.1",
        "port": port,
        "path": PATH,
        "body": str(body),
        "key": key,
        "duration": duration,
        "connections": connections,
        "out": str(out),
    }
    subprocess.run([sys.executable, "-m", "bench.poster", json.dumps(cfg)], check=True, timeout=duration + 120)
    r = json.loads(out.read_text())
    out.unlink()
    return {"client": f"bench.poster closed -c{connections}", **r}


def _measure(
    name: str,
    svc: Service,
    body: Path,
    key: str | None,
    batch: int,
    warmup: float,
    duration: float,
    conns: int,
) -> dict[str, Any]:
    svc.start()
    try:
        load(svc.port or 0, body, key, warmup, conns)
        meter = CpuMeter(service=svc.pid)
        res = load(svc.port or 0, body, key, duration, conns)
        res["cpu"] = meter.read()
        res["peak_rss_mb"] = peak_rss_mb(svc.pid)
        svc.check_alive()
        if svc.ready_path == "/readyz":
            status, diag = http_get(f"{svc.url}/system/zerobus/diagnostics")
            res["diagnostics"] = json.loads(diag) if status == 200 else None
    finally:
        svc.stop()
    res["events_per_s"] = res["requests"] * batch / res["duration_s"]
    res["service_cpu_us_per_event"] = round(res["cpu"].get("service", 0) / res["events_per_s"] * 1e6, 2)
    log(
        f"{name}: {res['events_per_s']:,.0f} events/s ({res['requests']} requests in "
        f"{res['duration_s']:.1f}s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
        f"errors {res['errors']}+{res['status_errors']}) cpu {res['cpu']}"
    )
    return res


def run(inf: Infra) -> list[Entry]:
    batch = int(os.environ.get("BENCH_HTTP_BATCH", "1000"))
    conns = int(os.environ.get("BENCH_HTTP_CONNECTIONS", "8"))
    duration = float(os.environ.get("BENCH_HTTP_SECONDS", "8" if QUICK else "20"))
    warmup = 2.0 if QUICK else 3.0
    created: list[str] = []
    try:
        tenant = new_tenant()
        created += [tenant]
        key = f"bench-key-{uuid.uuid4().hex}"
        OUT.mkdir(parents=True, exist_ok=True)
        body = OUT / "ingest-body.json"
        body.write_bytes(msgspec.json.encode(ignition_events(batch)))
        create_tenant_topics(inf.kafka, tenant)
        real = Service.module(
            "ingest-http",
            "otbus_ingest_http",
            {**inf.env(), "OTBUS_API_KEYS": json.dumps({key: tenant}), "OTBUS_LOG_LEVEL": "WARNING"},
            free_port(),
        )
        r = _measure("ingest-http", real, body, key, batch, warmup, duration, conns)
        port = free_port()
        uvicorn = ["-m", "uvicorn", "bench.bare_asgi:app", "--host", "127.0.0.1", "--port", str(port)]
        options = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        bare = Service(
            "bare-asgi",
            [sys.executable, *uvicorn, *options],
            port=port,
            ready_path="/",
        )
        b = _measure("bare endpoint", bare, body, None, batch, warmup, duration, conns)
    except Exception as e:
        log(f"{NAME} failed: {e}")
        return [failed_entry(NAME, UNIT, TARGET, e)]
    finally:
        stop_all()
        delete_topics(inf, created)
    value, base = r["events_per_s"], b["events_per_s"]
    clean = r["errors"] == 0 and r["status_errors"] == 0 and b["errors"] == 0 and b["status_errors"] == 0
    details: dict[str, Any] = {
        "tenant": tenant,
        "batch_events": batch,
        "body_bytes": body.stat().st_size,
        "connections": conns,
        "seconds": duration,
        "client": r["client"],
        "service": {k: v for k, v in r.items() if k != "events_per_s"},
        "bare": {k: v for k, v in b.items() if k not in ("events_per_s", "diagnostics")},
    }
    if not clean:
        details["error"] = "requests failed: see service/bare errors and status_errors"
    return [
        Entry(
            NAME,
            UNIT,
            value,
            base,
            TARGET,
            clean and value >= 200_000 and value / base >= 0.25,
            r["p50_ms"],
            r["p99_ms"],
            details,
        )
    ]


if __name__ == "__main__":
    run_alone(NAME, run)
