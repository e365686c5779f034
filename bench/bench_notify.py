"""Benchmarks of the notify bridge against a bare LISTEN loop and a bare websockets broadcast.

Load: events INSERTed into the event store's table at `BENCH_NOTIFY_RATE` (1,000/s) as
transactions of `BENCH_NOTIFY_PER_TX` (10) events, as the event store writes batches; each event's
`time` is the inserter's clock just before its INSERT, so every receiver measures
"INSERT -> received" against the same clock (one machine).

* baselines, measured in the same run under the same load:
  - bare LISTEN: one psycopg connection LISTENs on `otbus_events`; latency = arrival - time.
  - bare broadcast: a bare `websockets` server LISTENs and forwards every notification to 100
    WebSocket clients with `websockets.broadcast` (no fetch, no filter, no resume).
* notify_bridge_latency: the bridge with 100 clients. Its own histogram gives NOTIFY -> WebSocket
  (a notification's arrival to the send of the frame holding the event; target p99 < 10 ms); the
  clients give INSERT -> received, next to the bare broadcast's.
* notify_bridge_browser: the live page in headless Chromium; INSERT -> shown in the page
  (target p99 < 50 ms).
* notify_bridge_1000_clients: 1,000 clients at 1,000 events/s: every client gets every event
  and none is closed as slow.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    OUT,
    QUICK,
    CpuMeter,
    Entry,
    Infra,
    Service,
    failed_entry,
    free_port,
    log,
    metrics,
    new_tenant,
    peak_rss_mb,
    percentile,
    run_alone,
    stop_all,
)

NAME = "notify_bridge_latency"
BROWSER = "notify_bridge_browser"
MANY = "notify_bridge_1000_clients"
TARGET = "NOTIFY -> WebSocket p99 < 10 ms at 1,000 events/s with 100 clients"
BROWSER_TARGET = "INSERT -> browser-visible p99 < 50 ms at 1,000 events/s"
MANY_TARGET = "1,000 clients at 1,000 events/s: every event to every client, no slow-client close"
INSERT = (
    'INSERT INTO otbus_events (event_id, time, tenant, type, source, subject, payload, topic, "partition", "offset")'
    " VALUES (%s, to_timestamp(%s), %s, 'otbus.ot.tag.v1', 'bench', %s, %s, 'bench', 0, %s)"
)


# -- load --------------------------------------------------------------------------------------


def _insert(database_url: str, tenant: str, rate: float, seconds: float, per_tx: int, out: Any) -> None:
    from psycopg.types.json import Jsonb

    n = 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            due = t0 + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with conn.transaction(), conn.cursor() as cur:
                now = time.time()
                cur.executemany(
                    INSERT,
                    [
                        (
                            str(uuid.uuid4()),
                            now,
                            tenant,
                            f"plant1/area{i % 4}/line1/press{i % 10}/measurement/t{i % 50}",
                            Jsonb({"value": i * 0.5, "unit": "degC", "quality": "GOOD"}),
                            i,
                        )
                        for i in range(n, n + per_tx)
                    ],
                )
            n += per_tx
    out.put(("inserted", n, time.perf_counter() - t0))


class Load:
    """The inserter, as its own process."""

    def __init__(self, database_url: str, tenant: str, rate: float, seconds: float, per_tx: int) -> None:
        self.q: Any = mp.get_context("spawn").Queue()
        self.proc = mp.get_context("spawn").Process(
            target=_insert, args=(database_url, tenant, rate, seconds, per_tx, self.q), daemon=True
        )

    def __enter__(self) -> Load:
        self.proc.start()
        return self

    def result(self, timeout: float) -> tuple[int, float]:
        _, n, secs = self.q.get(timeout=timeout)
        self.proc.join(10)
        return int(n), float(secs)

    def __exit__(self, *exc: object) -> None:
        if self.proc.is_alive():
            self.proc.kill()


# -- receivers ---------------------------------------------------------------------------------


def _listen(database_url: str, seconds: float, out: Any) -> None:
    lat: list[float] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN otbus_events")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for note in conn.notifies(timeout=0.5, stop_after=1000):
                t = json.loads(note.payload)["time"]
                lat.append(time.time() - _epoch(t))
    out.put(lat)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


async def _clients(url: str, n: int, sample: int, seconds: float, subscribe: str | None, out: Any) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    counts = [0] * n
    lat: list[float] = []
    closes: list[int] = []
    ready = asyncio.Event()
    connected = 0

    async def one(i: int) -> None:
        nonlocal connected
        try:
            async with connect(url, max_size=None, open_timeout=60, ping_interval=None, compression=None) as ws:
                if subscribe is not None:
                    await ws.send(subscribe)
                    await ws.recv()
                connected += 1
                if connected == n:
                    ready.set()
                while True:
                    msg = await ws.recv()
                    now = time.time()
                    if i < sample:
                        frame = json.loads(msg)
                        events = frame.get("events") if "op" in frame else [frame]
                        for e in events or ():
                            lat.append(now - _epoch(e["time"]))
                            counts[i] += 1
                    else:
                        counts[i] += msg.count('"time"') if isinstance(msg, str) else 0
        except ConnectionClosed as e:
            closes.append(e.rcvd.code if e.rcvd else 1006)
        except asyncio.CancelledError:
            pass

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.wait_for(ready.wait(), 120)
    out.put(("ready", None))
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"counts": counts, "latencies": lat, "closes": closes}


def _clients_proc(url: str, n: int, sample: int, seconds: float, subscribe: str | None, out: Any) -> None:
    import uvloop

    out.put(("result", uvloop.run(_clients(url, n, sample, seconds, subscribe, out))))


def wsload() -> str | None:
    """bench/wsload (Go) built into bench/out, or None when there is no Go toolchain."""
    exe = OUT / "wsload"
    if exe.exists():
        return str(exe)
    if shutil.which("go") is None:
        return None
    src = Path(__file__).parent / "wsload"
    proc = subprocess.run(["go", "build", "-o", str(exe), "."], cwd=src, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        log(f"notify: could not build bench/wsload ({proc.stderr.strip()[-300:]}); using Python clients")
        return None
    return str(exe)


class Clients:
    """`n` WebSocket clients in their own process (Go's bench/wsload when it can be built, else
    Python), receiving for `seconds` after all have connected."""

    def __init__(self, url: str, n: int, sample: int, seconds: float, subscribe: str | None) -> None:
        self.proc: subprocess.Popen[str] | None = None
        exe = wsload()
        self.kind = "go" if exe else "python"
        if exe:
            args = [exe, "-url", url, "-n", str(n), "-sample", str(sample), "-seconds", str(seconds)]
            if subscribe is not None:
                args += ["-subscribe", subscribe]
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"wsload did not start: {line!r}")
            return
        ctx = mp.get_context("spawn")
        self.q: Any = ctx.Queue()
        self.mp = ctx.Process(target=_clients_proc, args=(url, n, sample, seconds, subscribe, self.q), daemon=True)
        self.mp.start()
        self.q.get(timeout=180)

    def result(self, timeout: float) -> dict[str, Any]:
        if self.proc is not None:
            out, _ = self.proc.communicate(timeout=timeout)
            return dict(json.loads(out.strip().splitlines()[-1]))
        _, res = self.q.get(timeout=timeout)
        self.mp.join(10)
        return dict(res)


async def _broadcast_server(database_url: str, port: int, seconds: float) -> None:
    from psycopg import AsyncConnection
    from websockets.asyncio.server import broadcast, serve

    clients: set[Any] = set()

    async def handler(ws: Any) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async with serve(handler, "127.0.0.1", port, ping_interval=None):
        conn = await AsyncConnection.connect(database_url, autocommit=True)
        await conn.execute("LISTEN otbus_events")
        end = time.monotonic() + seconds
        async for note in conn.notifies(timeout=seconds):
            broadcast(clients, note.payload)
            if time.monotonic() > end:
                break
        await conn.close()


def _broadcast_proc(database_url: str, port: int, seconds: float) -> None:
    import uvloop

    uvloop.run(_broadcast_server(database_url, port, seconds))


# -- the runs ------------------------------------------------------------------------------------


def _lat_summary(lat: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in lat]
    return {
        "samples": len(ms),
        "p50_ms": round(percentile(ms, 50) or 0, 2) if ms else None,
        "p99_ms": round(percentile(ms, 99) or 0, 2) if ms else None,
        "max_ms": round(max(ms), 2) if ms else None,
    }


def _histogram_quantile(before: dict[str, float], after: dict[str, float], name: str, q: float) -> float | None:
    """The q-quantile (ms) of a Prometheus histogram's observations between two scrapes."""
    buckets: list[tuple[float, float]] = []
    for k, v in after.items():
        if k.startswith(f"{name}_bucket{{le="):
            le = k.split('le="')[1].rstrip('"}')
            buckets.append((float("inf") if le == "+Inf" else float(le), v - before.get(k, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le * 1000
            frac = (rank - prev_n) / max(1e-9, n - prev_n)
            return (prev_le + (le - prev_le) * frac) * 1000
        prev_le, prev_n = le, n
    return None


def _wait_listening(port: int, proc: Any, timeout: float = 60.0) -> None:
    """Until something accepts connections on `port` (the spawned server imports for a while)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError(f"the bare broadcast server exited ({proc.exitcode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the bare broadcast server is not listening on {port} after {timeout:.0f}s")


def bare_baselines(inf: Infra, rate: float, per_tx: int, seconds: float, n_clients: int) -> dict[str, Any]:
    tenant = new_tenant()
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    listener = ctx.Process(target=_listen, args=(inf.database_url, seconds + 2, q), daemon=True)
    listener.start()
    time.sleep(1.0)
    with Load(inf.database_url, tenant, rate, seconds, per_tx) as load:
        n, secs = load.result(seconds + 30)
    listen = _lat_summary(q.get(timeout=30))
    listener.join(10)
    log(f"notify: bare LISTEN {listen}")

    port = free_port()
    server = ctx.Process(target=_broadcast_proc, args=(inf.database_url, port, seconds + 30), daemon=True)
    server.start()
    _wait_listening(port, server)
    clients = Clients(f"ws://127.0.0.1:{port}", n_clients, min(n_clients, 10), seconds + 2, None)
    time.sleep(1.0)
    with Load(inf.database_url, tenant, rate, seconds, per_tx) as load:
        n2, _ = load.result(seconds + 30)
    res = clients.result(seconds + 60)
    server.kill()
    bcast = _lat_summary(res["latencies"])
    bcast["events_per_client_min"] = min(res["counts"]) if res["counts"] else 0
    bcast["inserted"] = n2
    bcast["client_impl"] = clients.kind
    log(f"notify: bare broadcast to {n_clients} clients {bcast}")
    return {
        "bare_listen": {**listen, "inserted": n, "seconds": round(secs, 1)},
        "bare_broadcast": bcast,
        "baseline_tenant": tenant,
    }


def bridge_service(inf: Infra, tokens: dict[str, str]) -> Service:
    return Service.module(
        "notify-bridge",
        "otbus_notify_bridge",
        {**inf.env(), "OTBUS_API_TOKENS": json.dumps(tokens), "OTBUS_LOG_LEVEL": "WARNING"},
        free_port(),
    ).start()


def bridge_run(
    inf: Infra, svc: Service, token: str, tenant: str, rate: float, per_tx: int, seconds: float, n_clients: int
) -> dict[str, Any]:
    ws_url = svc.url.replace("http://", "ws://") + f"/ws?token={token}"
    # receive well past the load's end: its process takes a while to start, and under 1,000
    # clients the last events are half a second on their way; a short window counted them lost
    clients = Clients(ws_url, n_clients, min(n_clients, 10), seconds + 10, json.dumps({"op": "subscribe"}))
    time.sleep(1.0)
    before = metrics(svc.url)
    meter = CpuMeter(bridge=svc.pid)
    with Load(inf.database_url, tenant, rate, seconds, per_tx) as load:
        n, secs = load.result(seconds + 60)
    cpu = meter.read()
    res = clients.result(seconds + 120)
    after = metrics(svc.url)
    name = "otbus_bridge_notify_to_ws_seconds"
    counts = res["counts"]
    return {
        "clients": n_clients,
        "client_impl": clients.kind,
        "inserted": n,
        "achieved_rate": round(n / secs, 1),
        "events_per_client_min": min(counts) if counts else 0,
        "events_per_client_max": max(counts) if counts else 0,
        "closes": res["closes"],
        "insert_to_client": _lat_summary(res["latencies"]),
        "notify_to_ws_p50_ms": _r(_histogram_quantile(before, after, name, 0.5)),
        "notify_to_ws_p99_ms": _r(_histogram_quantile(before, after, name, 0.99)),
        "slow_closes": after.get("otbus_bridge_slow_client_closes_total", 0)
        - before.get("otbus_bridge_slow_client_closes_total", 0),
        "frames_sent": after.get("otbus_bridge_frames_sent_total", 0) - before.get("otbus_bridge_frames_sent_total", 0),
        "cpu_cores": cpu,
        "bridge_peak_rss_mb": peak_rss_mb(svc.pid),
    }


def _r(v: float | None) -> float | None:
    return round(v, 2) if v is not None else None


def browser_run(inf: Infra, svc: Service, token: str, tenant: str, rate: float, per_tx: int, seconds: float) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("no chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{svc.url}/?token={token}")
        page.wait_for_function("window.otbusLive && window.otbusLive.state === 'live'", timeout=15_000)
        with Load(inf.database_url, tenant, rate, seconds, per_tx) as load:
            n, secs = load.result(seconds + 60)
        page.wait_for_function(f"window.otbusLive.received >= {n}", timeout=30_000)
        lat = page.evaluate("window.otbusLive.latencies")  # ms, shown - event time, the last 10,000
        wire = page.evaluate("window.otbusLive.arrivals")  # ms, frame arrived - event time
        received = page.evaluate("window.otbusLive.received")
        browser.close()
    out = _lat_summary([x / 1000 for x in lat])
    arrived = _lat_summary([x / 1000 for x in wire])
    out.update(
        inserted=n,
        received=received,
        achieved_rate=round(n / secs, 1),
        arrived_p50_ms=arrived["p50_ms"],
        arrived_p99_ms=arrived["p99_ms"],
    )
    return out


def run(inf: Infra) -> list[Entry]:
    rate = float(os.environ.get("BENCH_NOTIFY_RATE", "1000"))
    per_tx = int(os.environ.get("BENCH_NOTIFY_PER_TX", "10"))
    seconds = 8.0 if QUICK else 20.0
    many = int(os.environ.get("BENCH_NOTIFY_MANY", "1000"))
    tenant = new_tenant()
    token = f"bench-{uuid.uuid4().hex}"
    entries: list[Entry] = []
    try:
        base = bare_baselines(inf, rate, per_tx, seconds, 100)
        svc = bridge_service(inf, {token: tenant})
        r = bridge_run(inf, svc, token, tenant, rate, per_tx, seconds, 100)
        log(f"notify: bridge, 100 clients {r}")
        p99 = r["notify_to_ws_p99_ms"]
        ok = p99 is not None and p99 < 10 and r["events_per_client_min"] >= r["inserted"] and not r["slow_closes"]
        bridge_p99 = r["insert_to_client"]["p99_ms"]
        bcast_p99 = base["bare_broadcast"]["p99_ms"]
        entries.append(
            Entry(
                NAME,
                "ms p99 INSERT->client",
                bridge_p99,
                bcast_p99,
                TARGET,
                ok,
                r["notify_to_ws_p50_ms"],
                p99,
                {
                    "bridge": r,
                    **base,
                    "rate": rate,
                    "events_per_tx": per_tx,
                    # rows this benchmark INSERTed itself (the cleanup expects them)
                    "tenants_written": [tenant, base["baseline_tenant"]],
                },
            )
        )
    except Exception as e:
        log(f"{NAME} failed: {e}")
        stop_all()
        return [failed_entry(NAME, "ms", TARGET, e)]
    try:
        b = browser_run(inf, svc, token, tenant, rate, per_tx, seconds)
        log(f"notify: browser {b}")
        # the same page at a fifth of the rate: where the page's own drawing stops being the limit
        b["at_200_per_s"] = browser_run(inf, svc, token, tenant, 200, per_tx, seconds)
        log(f"notify: browser at 200 events/s {b['at_200_per_s']}")
        ok = b["p99_ms"] is not None and b["p99_ms"] < 50 and b["received"] >= b["inserted"]
        entries.append(
            Entry(
                BROWSER,
                "ms",
                b["p99_ms"],
                base["bare_listen"]["p99_ms"],
                BROWSER_TARGET,
                ok,
                b["p50_ms"],
                b["p99_ms"],
                b,
            )
        )
    except Exception as e:
        log(f"{BROWSER} failed: {e}")
        entries.append(failed_entry(BROWSER, "ms", BROWSER_TARGET, e))
    try:
        m = bridge_run(inf, svc, token, tenant, rate, per_tx, seconds, many)
        log(f"notify: bridge, {many} clients {m}")
        ok = m["events_per_client_min"] >= m["inserted"] and not m["slow_closes"] and not m["closes"]
        delivered = m["inserted"] * many / seconds
        entries.append(
            Entry(
                MANY,
                "events delivered/s",
                delivered,
                None,
                MANY_TARGET,
                ok,
                m["insert_to_client"]["p50_ms"],
                m["insert_to_client"]["p99_ms"],
                m,
            )
        )
    except Exception as e:
        log(f"{MANY} failed: {e}")
        entries.append(failed_entry(MANY, "events delivered/s", MANY_TARGET, e))
    finally:
        stop_all()
    return entries


if __name__ == "__main__":
    run_alone("notify", run)
