"""Benchmarks of the ingest adapters, each against a bare client of its protocol in the same run.

* mqtt_json: N JSON messages (QoS 1) wait in the adapter's persistent session at Mosquitto
  (published while it was stopped); the adapter is started and timed from its first to its
  last reading acknowledged by Kafka (`/api/v1/status`, read every 50 ms). Baseline: a bare paho subscriber
  (QoS 1, auto ack, nothing decoded or produced) draining the same number from its session.
* sparkplug: the same with Sparkplug B: NBIRTH, a DBIRTH for each of 100 devices of 100 metrics
  (10,000 tags), then DDATA of 100 metrics each, round robin over the devices.
  Baseline: the bare paho subscriber, parsing each payload with protobuf.
* opcua: the simulator's OPC-UA server with 10,000 variables changing every second; the
  adapter subscribes to all (browse) and its readings/s into Kafka are measured over a
  window. Baseline: a bare asyncua subscription counting notifications over the same window.
* modbus: the simulator with 10,000 float32 signals (20,000 registers); the adapter polls
  them back to back (interval 10 ms) over one connection; registers/s into Kafka. Baseline:
  a bare pymodbus client reading the same ranges back to back.
* latency: MQTT JSON at 1,000 messages/s; each message carries its publish time; p50/p99
  from publish to the reading's arrival in the raw topic (read by a consumer on this host).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from confluent_kafka import Consumer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import (
    INFRA_SH,
    QUICK,
    CpuMeter,
    Entry,
    Infra,
    Service,
    admin,
    failed_entry,
    free_port,
    http_get,
    log,
    new_tenant,
    percentile,
    run_alone,
    stop_all,
    wait_until,
)
from otbus_core.codec import AvroCodec
from otbus_core.raw import NONE
from otbus_core.schemas import RAW_READING_BATCH
from otbus_core.sparkplug import DT, encode_payload
from otbus_core.topics import TopicSpec, ensure_topics, raw_topic

MQTT_URL = os.environ.get("OTBUS_MQTT_URL", "mqtt://127.0.0.1:11883")
TAGS = 10_000


def _mqtt_hostport() -> tuple[str, int]:
    rest = MQTT_URL.split("://", 1)[-1]
    host, _, port = rest.partition(":")
    return host or "127.0.0.1", int(port or 1883)


def _status(svc: Service) -> dict[str, Any]:
    code, body = http_get(f"{svc.url}/api/v1/status")
    return msgspec.json.decode(body) if code == 200 else {}


def _delivered(svc: Service) -> int:
    return int(_status(svc).get("kafka", {}).get("delivered_readings", 0))


def _adapter(kind: str, module: str, inf: Infra, tenant: str, sources: str, home: Path, **env: str) -> Service:
    f = home / f"{kind}-sources.yaml"
    f.write_text(sources)
    return Service.module(
        kind,
        module,
        {
            **inf.env(),
            "OTBUS_TENANT": tenant,
            "OTBUS_SOURCES_FILE": str(f),
            "OTBUS_STATE_DIR": str(home / "state"),
            "OTBUS_LOG_LEVEL": "WARNING",
            **env,
        },
        free_port(),
    )


# how often the adapter's status is read while it drains: each read is a request its event loop
# answers (GIL and CPU taken from the protocol thread), so not too often; the runs are long
# enough (seconds) for 50 ms to be a small error
_POLL_S = float(os.environ.get("BENCH_ADAPTER_POLL_MS", "50")) / 1000


def _drain_rate(svc: Service, total: int, timeout: float = 600) -> dict[str, Any]:
    """Start the adapter; readings/s from its first to its last reading acknowledged by Kafka
    (sampled every 10 ms from the moment the process starts)."""
    svc.ready_path = None
    svc.start()
    meter = CpuMeter(service=svc.pid)
    first_t: float | None = None
    first_n = 0
    deadline = time.monotonic() + timeout
    while True:
        n = _delivered(svc)
        now = time.monotonic()
        if first_t is None and n > 0:
            first_t, first_n = now, n
        if n >= total:
            break
        if now > deadline:
            raise TimeoutError(f"{svc.name}: {n} of {total} readings after {timeout}s")
        time.sleep(_POLL_S)
    cpu = meter.read()
    svc.ready_path = "/readyz"
    if first_t is None or first_n > total // 2:
        raise RuntimeError(f"{svc.name}: half the readings were delivered before the first sample")
    seconds = max(1e-6, now - first_t)
    return {"readings": total, "seconds": round(seconds, 3), "per_s": (total - first_n) / seconds, "cpu_cores": cpu}


# -- MQTT -------------------------------------------------------------------------------------


def _publish_all(topic_payloads: list[tuple[str, bytes]], qos: int = 1) -> float:
    host, port = _mqtt_hostport()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(1000)
    c.connect(host, port, 60)
    c.loop_start()
    t0 = time.perf_counter()
    last = None
    for i, (topic, body) in enumerate(topic_payloads):
        last = c.publish(topic, body, qos=qos)
        if i % 2000 == 1999:
            last.wait_for_publish(600)  # paho's own queue is bounded: keep it from filling
    if last is not None:
        last.wait_for_publish(600)
    seconds = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return len(topic_payloads) / seconds


def _persistent_client(client_id: str) -> tuple[mqtt.Client, Properties]:
    """An MQTT 5 client and the CONNECT properties of a session the broker keeps for an hour."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    return c, props


def _session(client_id: str, topic: str) -> None:
    """Create (or renew) a persistent QoS 1 session for `client_id` subscribed to `topic`."""
    c, props = _persistent_client(client_id)
    done = threading.Event()
    c.on_subscribe = lambda *_a: done.set()
    c.connect(*_mqtt_hostport(), 60, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe(topic, qos=1)
    done.wait(10)
    c.loop_stop()
    c.disconnect()


def _forget_session(client_id: str) -> None:
    """End `client_id`'s persistent session at the broker (a clean start with no expiry), so the
    messages later benchmarks publish are not queued for it: Mosquitto writes its whole store to
    disk every autosave interval (60 s here) and, with 100,000 messages queued for a forgotten
    session, that save stalled every client for about 400 ms in the middle of the latency run."""
    c, props = _persistent_client(client_id)
    props.SessionExpiryInterval = 0
    c.connect(*_mqtt_hostport(), 60, clean_start=True, properties=props)
    c.loop_start()
    time.sleep(0.2)
    c.loop_stop()
    c.disconnect()


def _bare_drain(client_id: str, topic: str, total: int, parse: Any = None) -> float:
    """A bare paho subscriber draining `total` queued messages from its session; messages/s."""
    c, props = _persistent_client(client_id)
    got = 0
    first: float | None = None
    last = 0.0
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal got, first, last
        if parse is not None:
            parse(msg.payload)
        got += 1
        last = time.perf_counter()
        if first is None:
            first = last
        if got >= total:
            done.set()

    c.on_message = on_message
    c.connect(*_mqtt_hostport(), 60, clean_start=False, properties=props)
    c.loop_start()
    done.wait(600)
    c.loop_stop()
    c.disconnect()
    if first is None or got < total:
        raise TimeoutError(f"bare subscriber got {got} of {total}")
    return (total - 1) / max(1e-6, last - first)


def bench_mqtt_json(inf: Infra, home: Path) -> Entry:
    n = 30_000 if QUICK else 100_000
    tenant = new_tenant()
    topic = f"bench/{tenant}/json"
    cid = f"otbus-bench-json-{tenant}"
    sources = f"""
sources:
  - {{name: json, protocol: mqtt, endpoint: "{MQTT_URL}", client_id: "{cid}", topics: ["{topic}/#"], qos: 1}}
"""
    svc = _adapter("ingest-mqtt", "otbus_ingest_mqtt", inf, tenant, sources, home)
    svc.start()  # the session exists from now on
    svc.stop()
    now_ms = int(time.time() * 1000)
    msgs = [(f"{topic}/t{i % TAGS}", b'{"value": %d, "timestamp": %d}' % (i, now_ms)) for i in range(n)]
    pub_rate = _publish_all(msgs)
    r = _drain_rate(svc, n)
    svc.stop()
    _forget_session(cid)
    bare_id = f"bench-bare-json-{tenant}"
    _session(bare_id, f"{topic}/#")
    _publish_all(msgs)
    bare = _bare_drain(bare_id, f"{topic}/#", n)
    _forget_session(bare_id)
    log(f"mqtt json: adapter {r['per_s']:,.0f} msg/s, bare {bare:,.0f} msg/s (publisher {pub_rate:,.0f}/s)")
    return Entry(
        "adapter_mqtt_json",
        "messages/s",
        r["per_s"],
        bare,
        ">= 50,000 messages/s",
        r["per_s"] >= 50_000,
        details={"messages": n, "adapter": r, "publisher_per_s": pub_rate},
    )


def bench_sparkplug(inf: Infra, home: Path) -> Entry:
    per = 100
    # 10,000 tags: 100 metrics on each of 100 devices of one edge node
    devices = int(os.environ.get("BENCH_SPB_DEVICES", "100"))
    k = 600 if QUICK else 3000
    tenant = new_tenant()
    group = f"b{tenant}"
    cid = f"otbus-bench-spb-{tenant}"
    base = f"spBv1.0/{group}"
    sources = f"""
sources:
  - {{name: spb, protocol: mqtt, endpoint: "{MQTT_URL}", client_id: "{cid}", topics: ["{base}/#"], qos: 1}}
"""
    svc = _adapter("ingest-mqtt", "otbus_ingest_mqtt", inf, tenant, sources, home)
    svc.start()
    svc.stop()
    t = int(time.time() * 1000)
    birth = encode_payload([{"name": "bdSeq", "datatype": DT.Int64, "value": 1}], 0, t)
    born = [{"name": f"m{j}", "alias": j, "datatype": DT.Double, "value": 0.0} for j in range(per)]
    msgs = [(f"{base}/NBIRTH/edge", birth)]
    seq = 1  # one sequence per edge node, over all its devices' messages
    for d in range(devices):
        msgs.append((f"{base}/DBIRTH/edge/dev{d}", encode_payload(born, seq % 256, t)))
        seq += 1
    for i in range(k):
        body = encode_payload(
            [{"alias": j, "datatype": DT.Double, "value": float(i * per + j)} for j in range(per)], seq % 256, t + i
        )
        seq += 1
        msgs.append((f"{base}/DDATA/edge/dev{i % devices}", body))
    total = per * (k + devices)  # the DBIRTHs' values are readings too
    _publish_all(msgs)
    r = _drain_rate(svc, total)
    svc.stop()
    _forget_session(cid)
    from otbus_core.sparkplug import decode_payload

    bare_id = f"bench-bare-spb-{tenant}"
    _session(bare_id, f"{base}/#")
    _publish_all(msgs)
    bare_msgs = _bare_drain(bare_id, f"{base}/#", len(msgs), parse=lambda p: len(decode_payload(bytes(p)).metrics))
    _forget_session(bare_id)
    bare = bare_msgs * per
    log(f"sparkplug: adapter {r['per_s']:,.0f} metrics/s, bare {bare:,.0f} metrics/s")
    return Entry(
        "adapter_sparkplug",
        "metrics/s",
        r["per_s"],
        bare,
        ">= 100,000 metrics/s",
        r["per_s"] >= 100_000,
        details={"metrics": total, "metrics_per_message": per, "adapter": r},
    )


# -- OPC-UA -----------------------------------------------------------------------------------


def _simulator(*args: str) -> subprocess.Popen[bytes]:
    log_path = Path("bench/out/logs") / f"simulator-{args[0]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    f = log_path.open("ab")
    p = subprocess.Popen([sys.executable, "-m", "otbus_ot_simulator", *args], stdout=f, stderr=f)
    marker = b" on " if args[0] != "opcua" else b"OPC-UA on"
    wait_until(lambda: marker in log_path.read_bytes() or p.poll() is not None, 300, f"{args[0]} simulator")
    if p.poll() is not None:
        raise RuntimeError(f"{args[0]} simulator exited: {log_path.read_text()[-500:]}")
    return p


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


async def _bare_opcua(endpoint: str, window: float) -> float:
    from asyncua import Client

    count = 0

    class Handler:
        def datachange_notification(self, *_a: Any) -> None:
            nonlocal count
            count += 1

    async with Client(endpoint, timeout=60, watchdog_intervall=60) as client:
        idx = await client.get_namespace_index("urn:otbus:simulator")
        root = await client.nodes.objects.get_child([f"{idx}:Plant1"])
        nodes: list[Any] = []
        stack = [root]
        while stack:
            node = stack.pop()
            for d in await node.get_children_descriptions():
                child = client.get_node(d.NodeId)
                if d.NodeClass == 2:  # Variable
                    nodes.append(child)
                elif d.NodeClass == 1:  # Object
                    stack.append(child)
        sub = await client.create_subscription(100, Handler())
        for i in range(0, len(nodes), 1000):
            await sub.subscribe_data_change(nodes[i : i + 1000], queuesize=10, sampling_interval=100)
        await asyncio.sleep(3)  # past the initial values
        start = count
        await asyncio.sleep(window)
        return (count - start) / window


def bench_opcua(inf: Infra, home: Path) -> Entry:
    window = 10.0 if QUICK else 20.0
    port = free_port()
    sim = _simulator("opcua", "--port", str(port), "--tags", str(TAGS), "--interval", "1")
    endpoint = f"opc.tcp://127.0.0.1:{port}/otbus/simulator"
    tenant = new_tenant()
    try:
        sources = f"""
sources:
  - name: plant
    protocol: opcua
    endpoint: "{endpoint}"
    browse_roots: ["Plant1"]
    variable_limit: 20000
    publishing_interval_ms: 100
    sampling_interval_ms: 100
    timeout_s: 60
    watchdog_s: 30
"""
        svc = _adapter("ingest-opcua", "otbus_ingest_opcua", inf, tenant, sources, home)
        svc.start(ready_timeout=300)
        wait_until(lambda: _delivered(svc) > TAGS, 300, "the initial values")
        time.sleep(2)
        meter = CpuMeter(service=svc.pid)
        n0, t0 = _delivered(svc), time.monotonic()
        time.sleep(window)
        rate = (_delivered(svc) - n0) / (time.monotonic() - t0)
        cpu = meter.read()
        svc.stop()
        bare = asyncio.run(_bare_opcua(endpoint, window))
    finally:
        _stop(sim)
    log(f"opcua: adapter {rate:,.0f} readings/s, bare subscription {bare:,.0f}/s")
    return Entry(
        "adapter_opcua_subscription",
        "readings/s",
        rate,
        bare,
        ">= 20,000 readings/s (10,000 variables)",
        rate >= 20_000,
        details={"variables": TAGS, "window_s": window, "cpu_cores": cpu},
    )


# -- Modbus -----------------------------------------------------------------------------------


async def _bare_modbus(port: int, window: float, registers: int) -> float:
    from pymodbus.client import AsyncModbusTcpClient

    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0, reconnect_delay=0)
    await c.connect()
    read = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < window:
        for a in range(0, registers, 124):
            rr = await c.read_holding_registers(10_000 + a, count=min(124, registers - a), device_id=1)
            read += len(rr.registers)
    c.close()
    return read / (time.monotonic() - t0)


def bench_modbus(inf: Infra, home: Path) -> Entry:
    window = 10.0 if QUICK else 20.0
    port = free_port()
    sim = _simulator("modbus", "--port", str(port), "--tags", str(TAGS), "--interval", "1")
    tenant = new_tenant()
    try:
        sources = f"""
sources:
  - name: plc
    protocol: modbus
    endpoint: "modbus://127.0.0.1:{port}"
    timeout_s: 5
    polling_interval_ms: 10
    registers: [{{address: 10000, data_type: float32, count: {TAGS}, name: signal}}]
"""
        svc = _adapter("ingest-modbus", "otbus_ingest_modbus", inf, tenant, sources, home)
        svc.start()
        wait_until(lambda: _delivered(svc) >= TAGS, 120, "the first poll")
        meter = CpuMeter(service=svc.pid)
        n0, t0 = _delivered(svc), time.monotonic()
        time.sleep(window)
        readings = (_delivered(svc) - n0) / (time.monotonic() - t0)
        cpu = meter.read()
        svc.stop()
        bare = asyncio.run(_bare_modbus(port, window, 2 * TAGS))
    finally:
        _stop(sim)
    rate = readings * 2  # a float32 is two registers
    log(f"modbus: adapter {rate:,.0f} registers/s, bare client {bare:,.0f} registers/s")
    return Entry(
        "adapter_modbus",
        "registers/s",
        rate,
        bare,
        ">= 5,000 registers/s per device connection",
        rate >= 5_000,
        details={"registers": 2 * TAGS, "readings_per_s": readings, "window_s": window, "cpu_cores": cpu},
    )


# -- latency ----------------------------------------------------------------------------------


def bench_latency(inf: Infra, home: Path) -> Entry:
    seconds = 10 if QUICK else 30
    rate = 1000
    tenant = new_tenant()
    topic = f"bench/{tenant}/lat"
    sources = f"""
sources:
  - name: lat
    protocol: mqtt
    endpoint: "{MQTT_URL}"
    client_id: "otbus-bench-lat-{tenant}"
    topics: ["{topic}/#"]
    json_mapping: {{timestamp_unit: us}}
"""
    svc = _adapter("ingest-mqtt", "otbus_ingest_mqtt", inf, tenant, sources, home)
    svc.start()
    codec = AvroCodec()
    consumer = Consumer(
        {
            "bootstrap.servers": inf.kafka,
            "group.id": f"bench-lat-{tenant}",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 5,
            "fetch.min.bytes": 1,
        }
    )
    ensure_topics(admin(inf.kafka), [TopicSpec(raw_topic(tenant, "mqtt"))])
    consumer.subscribe([raw_topic(tenant, "mqtt")])
    lat: list[float] = []
    to_produce: list[float] = []  # publish -> the adapter's produce() (ms resolution)
    sent_at: list[int] = []  # publish times (µs), to see when the slow ones were sent
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            # poll() returns as soon as a record is there; consume(n, timeout) would wait for n
            # records or the whole timeout, and add that wait to every latency
            first = consumer.poll(0.05)
            if first is None:
                continue
            now = time.time_ns() // 1000
            for m in [first, *consumer.consume(1000, 0)]:
                if m.error():
                    continue
                b = codec.decode(m.value(), RAW_READING_BATCH)
                produced = m.timestamp()[1] * 1000  # CreateTime: when the adapter handed it to librdkafka
                for t in b["source_times"]:
                    if t != NONE:
                        lat.append((now - t) / 1000)
                        to_produce.append((produced - t) / 1000)
                        sent_at.append(t)

    # the measuring process must not pause itself: a full collection here (earlier benchmarks
    # left plenty to walk) showed up as a 100 ms stall of the adapter
    gc.collect()
    gc.disable()
    th = threading.Thread(target=consume)
    th.start()
    host, port = _mqtt_hostport()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-lat-pub-{tenant}")
    c.connect(host, port, 60)
    c.loop_start()
    try:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            t = time.monotonic()
            for _ in range(rate // 100):
                c.publish(f"{topic}/t{i % 100}", b'{"value": %d, "timestamp": %d}' % (i, time.time_ns() // 1000), qos=1)
                i += 1
            time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))
        time.sleep(2)
    finally:
        c.loop_stop()
        c.disconnect()
        stop.set()
        th.join()
        consumer.close()
        gc.enable()
        svc.stop()
        _forget_session(f"otbus-bench-lat-{tenant}")
    skip = len(lat) // 10  # past the warm-up (topic creation, first fetch)
    lat, to_produce, sent_at = lat[skip:], to_produce[skip:], sent_at[skip:]
    # the slowest readings and when they were sent (s into the measured window): a regular
    # interval between them points at a periodic pause (GC, fsync, metadata refresh)
    t0 = sent_at[0] if sent_at else 0
    slowest = sorted(zip(lat, to_produce, sent_at, strict=True), reverse=True)[:15]
    slow = [
        (round((t - t0) / 1e6, 3), round(total, 1), round(prod, 1))
        for total, prod, t in sorted(slowest, key=lambda x: x[2])
    ]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    log(f"publish -> adapter produce(): p50 {percentile(to_produce, 50)} ms, p99 {percentile(to_produce, 99)} ms")
    log(f"adapter -> raw topic latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(lat)} readings)")
    log(f"slowest (s into the window, total ms, to produce() ms): {slow}")
    return Entry(
        "adapter_latency_mqtt",
        "ms",
        p99,
        None,
        "p99 adapter -> raw topic < 20 ms at 1,000 messages/s",
        p99 is not None and p99 < 20,
        p50,
        p99,
        details={
            "readings": len(lat),
            "rate_per_s": rate,
            "publish_to_produce_p50_ms": percentile(to_produce, 50),
            "publish_to_produce_p99_ms": percentile(to_produce, 99),
            "over_20_ms": sum(1 for x in lat if x > 20),
            "slowest_at_s_total_ms_to_produce_ms": slow,
        },
    )


def run(inf: Infra) -> list[Entry]:
    subprocess.run(["bash", str(INFRA_SH), "stop", "mosquitto"], capture_output=True, timeout=120)
    subprocess.run(["bash", str(INFRA_SH), "start", "mosquitto"], capture_output=True, timeout=300, check=True)
    out: list[Entry] = []
    only = {n for n in os.environ.get("BENCH_ADAPTERS", "").split(",") if n}  # e.g. adapter_latency_mqtt
    with tempfile.TemporaryDirectory(prefix="otbus-bench-adapters-") as tmp:
        home = Path(tmp)
        for name, unit, target, fn in (
            ("adapter_mqtt_json", "messages/s", ">= 50,000 messages/s", bench_mqtt_json),
            ("adapter_sparkplug", "metrics/s", ">= 100,000 metrics/s", bench_sparkplug),
            ("adapter_opcua_subscription", "readings/s", ">= 20,000 readings/s", bench_opcua),
            ("adapter_modbus", "registers/s", ">= 5,000 registers/s", bench_modbus),
            ("adapter_latency_mqtt", "ms", "p99 < 20 ms", bench_latency),
        ):
            if only and name not in only:
                continue
            try:
                out.append(fn(inf, home))
            except Exception as e:
                log(f"{name} failed: {e}")
                out.append(failed_entry(name, unit, target, e))
            finally:
                stop_all()
    return out


if __name__ == "__main__":
    run_alone("adapters", run)
