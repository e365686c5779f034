"""HTTP load for the benchmarks, run as its own process: `python -m bench.poster '<json config>'`.

A minimal HTTP/1.1 keep-alive client on asyncio streams (uvloop): a few tens of microseconds
of CPU per request, so it is not what limits the figures. Modes:

* `closed`: `connections` clients post one pre-built body back to back for `duration` seconds
  (the fallback when `wrk` is not installed);
* `rate`: one batch of `batch` events every `batch / rate` seconds, open loop, each batch's
  value = its sequence number and each send time recorded (post -> queryable latency);
* `governed`: `connections` clients post batches as fast as the pipeline takes them, pausing
  while more than `max_backlog` accepted events are not yet stored (the event store group's
  committed offsets on the tags topic): the highest rate the pipeline sustains.

The result is written as JSON to `out`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bench.common import admin, committed_offsets, ignition_events, percentile


class Http:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self._w is None or self._r is None:
            self._r, self._w = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        )
        try:
            self._w.write(head.encode() + body)
            await self._w.drain()
            status_line = await self._r.readline()
            if not status_line:
                raise ConnectionError("server closed the connection")
            status = int(status_line.split(b" ", 2)[1])
            length, close = 0, False
            while True:
                line = await self._r.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    length = int(v)
                elif k == b"connection" and v.strip().lower() == b"close":
                    close = True
            data = await self._r.readexactly(length) if length else b""
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
        self._r = self._w = None


def _summary(lat: list[float]) -> dict[str, Any]:
    return {
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else None,
    }


async def closed(cfg: dict[str, Any]) -> dict[str, Any]:
    body = Path(cfg["body"]).read_bytes()
    headers = {"X-API-Key": cfg["key"]} if cfg.get("key") else {}
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    t0 = time.monotonic()
    deadline = t0 + cfg["duration"]

    async def worker() -> None:
        nonlocal errors
        conn = Http(cfg["host"], cfg["port"])
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                status, _ = await conn.post(cfg["path"], body, headers)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                await asyncio.sleep(0.01)
                continue
            lat.append((time.perf_counter() - t) * 1000)
            statuses[status] += 1
        conn.close()

    await asyncio.gather(*(worker() for _ in range(cfg["connections"])))
    elapsed = time.monotonic() - t0
    ok = statuses.get(200, 0)
    return {
        "requests": len(lat),
        "ok": ok,
        "duration_s": elapsed,
        "errors": errors,
        "status_errors": len(lat) - ok,
        "statuses": dict(statuses),
        **_summary(lat),
    }


def _lat_body(seq: int, batch: int, now_ms: int) -> bytes:
    events = [
        {
            "tagPath": f"[default]Latency/Machine{i % 7}/Temp_{i}",
            "tagProvider": "default",
            "value": seq,
            "quality": "GOOD",
            "qualityCode": 192,
            "timestamp": now_ms,
            "dataType": "int",
        }
        for i in range(batch)
    ]
    return msgspec.json.encode(events)


async def rate(cfg: dict[str, Any]) -> dict[str, Any]:
    batch, per_s = cfg["batch"], cfg["rate"]
    interval = batch / per_s
    n = int(cfg["duration"] / interval)
    headers = {"X-API-Key": cfg["key"]}
    pool: list[Http] = []
    sent: dict[int, dict[str, Any]] = {}

    async def one(seq: int, body: bytes, t_wall: float) -> None:
        conn = pool.pop() if pool else Http(cfg["host"], cfg["port"])
        t = time.perf_counter()
        try:
            status, data = await conn.post(cfg["path"], body, headers)
            accepted = msgspec.json.decode(data).get("accepted", 0) if status == 200 else 0
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            status, accepted = 0, 0
            sent[seq] = {"error": str(e)}
        else:
            pool.append(conn)
        sent[seq] = {
            **sent.get(seq, {}),
            "t_sent": t_wall,
            "response_ms": (time.perf_counter() - t) * 1000,
            "status": status,
            "accepted": accepted,
        }

    tasks = []
    start = time.monotonic() + 0.05
    late = 0
    for seq in range(n):
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -interval:
            late += 1
        t_wall = time.time()
        body = _lat_body(seq, batch, int(t_wall * 1000))
        tasks.append(asyncio.create_task(one(seq, body, t_wall)))
    await asyncio.gather(*tasks)
    for c in pool:
        c.close()
    resp = [v["response_ms"] for v in sent.values()]
    return {
        "batches": n,
        "events": sum(v["accepted"] for v in sent.values()),
        "failed_batches": sum(1 for v in sent.values() if v["status"] != 200),
        "late_sends": late,
        "sent": {str(k): v for k, v in sent.items()},
        "response": _summary(resp),
    }


async def governed(cfg: dict[str, Any]) -> dict[str, Any]:
    batch, bodies_n = cfg["batch"], cfg.get("bodies", 20)
    now_ms = int(time.time() * 1000)
    bodies = [msgspec.json.encode(ignition_events(batch, k * batch, "Line1", now_ms)) for k in range(bodies_n)]
    headers = {"X-API-Key": cfg["key"]}
    adm = admin(cfg["bootstrap"])
    state = {"accepted": 0, "inflight": 0, "stored_est": 0, "failed": 0, "requests": 0, "paused": 0}
    series: list[tuple[float, int, int]] = []
    lat: list[float] = []
    t0 = time.monotonic()
    deadline = t0 + cfg["duration"]
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            state["stored_est"] = await asyncio.to_thread(
                committed_offsets, adm, cfg["store_group"], cfg["tags_topic"], cfg["partitions"]
            )
            series.append((round(time.monotonic() - t0, 2), state["accepted"], state["stored_est"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.25)

    async def worker(k: int) -> None:
        conn = Http(cfg["host"], cfg["port"])
        i = k
        while time.monotonic() < deadline:
            if state["accepted"] + state["inflight"] - state["stored_est"] > cfg["max_backlog"]:
                state["paused"] += 1
                await asyncio.sleep(0.01)
                continue
            body = bodies[i % len(bodies)]
            i += cfg["connections"]
            state["inflight"] += batch
            t = time.perf_counter()
            try:
                status, data = await conn.post(cfg["path"], body, headers)
                state["requests"] += 1
                if status == 200:
                    state["accepted"] += msgspec.json.decode(data)["accepted"]
                    lat.append((time.perf_counter() - t) * 1000)
                else:
                    state["failed"] += 1
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                state["failed"] += 1
                await asyncio.sleep(0.05)
            finally:
                state["inflight"] -= batch
        conn.close()

    watcher = asyncio.create_task(watch())
    first_post = time.time()
    await asyncio.gather(*(worker(k) for k in range(cfg["connections"])))
    last_post = time.time()
    done.set()
    await watcher
    return {
        "first_post": first_post,
        "last_post": last_post,
        "accepted": state["accepted"],
        "requests": state["requests"],
        "failed_requests": state["failed"],
        "paused_polls": state["paused"],
        "series": series,
        "response": _summary(lat),
    }


def main() -> None:
    cfg = json.loads(sys.argv[1])
    mode = {"closed": closed, "rate": rate, "governed": governed}[cfg["mode"]]
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(mode(cfg))
    Path(cfg["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
