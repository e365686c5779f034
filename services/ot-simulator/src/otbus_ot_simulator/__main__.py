"""Ignition Event Streams style HTTP poster.

Posts batches of tag events, in exactly the shape of the Ignition script handler,
to `/system/zerobus/ingest/batch` of ingest-http:

    python -m otbus_ot_simulator http --url http://127.0.0.1:8088 --api-key KEY --tags 200 --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time

import httpx

from otbus_ot_simulator.signals import plant


def post_http(url: str, api_key: str, tags: int, rate: float, seconds: float | None, batch_ms: int) -> int:
    signals = plant(tags)
    rng = random.Random(2)
    endpoint = url.rstrip("/") + "/system/zerobus/ingest/batch"
    sent = accepted = 0
    started = time.monotonic()
    per_batch = max(1, int(rate * batch_ms / 1000))
    idx = 0
    with httpx.Client(timeout=30, headers={"X-API-Key": api_key}) as client:
        next_report = started + 5
        while seconds is None or time.monotonic() - started < seconds:
            t = time.time()
            batch = []
            for _ in range(per_batch):
                s = signals[idx % len(signals)]
                idx += 1
                batch.append(
                    {
                        "tagPath": f"[default]{s.path}",
                        "tagProvider": "default",
                        "value": s.sample(t, rng),
                        "quality": "GOOD",
                        "qualityCode": 192,
                        "timestamp": int(t * 1000),
                        "dataType": s.data_type(),
                    }
                )
            try:
                r = client.post(endpoint, json=batch)
                r.raise_for_status()
                accepted += r.json()["accepted"]
            except httpx.HTTPError as e:
                print(f"simulator: post failed: {e}", file=sys.stderr)  # noqa: T201
            sent += len(batch)
            now = time.monotonic()
            if now >= next_report:
                print(f"simulator: {accepted} of {sent} events accepted ({accepted / (now - started):.0f}/s)")  # noqa: T201
                next_report = now + 5
            time.sleep(max(0.0, batch_ms / 1000 - (time.monotonic() - now)))
    return accepted


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="otbus-ot-simulator")
    sub = p.add_subparsers(dest="mode", required=True)
    h = sub.add_parser("http", help="post Ignition Event Streams style batches to ingest-http")
    h.add_argument("--url", default="http://127.0.0.1:8088")
    h.add_argument("--api-key", required=True)
    h.add_argument("--tags", type=int, default=200)
    h.add_argument("--rate", type=float, default=500.0, help="events per second")
    h.add_argument("--seconds", type=float, default=None, help="stop after this long (default: run until Ctrl-C)")
    h.add_argument("--batch-ms", type=int, default=200, help="buffer window, like the Event Stream's max wait")
    m = sub.add_parser("modbus", help="serve a Modbus TCP device (register map: otbus_ot_simulator/modbus.py)")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=5020)
    m.add_argument("--tags", type=int, default=100, help="live signals (at most 500)")
    m.add_argument("--interval", type=float, default=0.5, help="seconds between value updates")
    m.add_argument("--units", default="1,2", help="unit ids served, comma-separated")
    m.add_argument("--framer", default="socket", choices=("socket", "rtu"), help="rtu: RTU frames over TCP")
    m.add_argument("--serial", help="serve RTU on this serial device (or pseudo-terminal) instead of TCP")
    m.add_argument("--baudrate", type=int, default=19200)
    j = sub.add_parser("mqtt-json", help="publish JSON readings per tag to MQTT")
    j.add_argument("--url", default="mqtt://127.0.0.1:11883")
    j.add_argument("--prefix", default="otbus-sim")
    j.add_argument("--tags", type=int, default=100)
    j.add_argument("--rate", type=float, default=200.0, help="messages per second")
    j.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    j.add_argument("--seconds", type=float, default=None)
    j.add_argument("--count", type=int, default=None, help="stop after this many messages")
    s = sub.add_parser("sparkplug", help="run Sparkplug B edge nodes")
    s.add_argument("--url", default="mqtt://127.0.0.1:11883")
    s.add_argument("--group", default="plant1")
    s.add_argument("--nodes", type=int, default=2)
    s.add_argument("--devices", type=int, default=2)
    s.add_argument("--tags", type=int, default=100, help="metrics in all, spread over the devices")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between DDATA rounds")
    s.add_argument("--seconds", type=float, default=None)
    o = sub.add_parser("opcua", help="serve an OPC-UA server (address space: otbus_ot_simulator/opcua.py)")
    o.add_argument("--host", default="127.0.0.1")
    o.add_argument("--port", type=int, default=4840)
    o.add_argument("--tags", type=int, default=100)
    o.add_argument("--interval", type=float, default=0.5)
    o.add_argument("--security", default="none", choices=("none", "sign", "encrypt", "all"))
    o.add_argument("--pki", default=None, help="directory of the server certificate (made on first start)")
    o.add_argument("--user", default=None, help="name:password required to connect")
    r = sub.add_parser("recommendations", help="write AI recommendations into Lakebase (seed 002), play the operator")
    r.add_argument("--database-url", required=True)
    r.add_argument("--tenant", required=True)
    r.add_argument("--interval", type=float, default=10.0, help="seconds between recommendations")
    r.add_argument("--seconds", type=float, default=None)
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if args.mode == "http":
            post_http(args.url, args.api_key, args.tags, args.rate, args.seconds, args.batch_ms)
        elif args.mode == "modbus":
            from otbus_ot_simulator.modbus import serve_modbus

            units = [int(u) for u in args.units.split(",") if u.strip()]
            asyncio.run(
                serve_modbus(
                    args.host, args.port, args.tags, args.interval, units, args.framer, args.serial, args.baudrate
                )
            )
        elif args.mode == "opcua":
            from pathlib import Path

            from otbus_ot_simulator.opcua import serve_opcua

            pki = Path(args.pki) if args.pki else None
            asyncio.run(serve_opcua(args.host, args.port, args.tags, args.interval, args.security, pki, args.user))
        elif args.mode == "mqtt-json":
            from otbus_ot_simulator.mqtt import publish_json

            publish_json(args.url, args.prefix, args.tags, args.rate, args.qos, args.seconds, args.count)
        elif args.mode == "recommendations":
            from otbus_ot_simulator.recommendations import run_recommendations

            run_recommendations(args.database_url, args.tenant, args.interval, args.seconds)
        elif args.mode == "sparkplug":
            from otbus_ot_simulator.mqtt import run_sparkplug

            run_sparkplug(args.url, args.group, args.nodes, args.devices, args.tags, args.interval, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
