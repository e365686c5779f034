"""An MQTT publisher of plant signals: JSON per tag, and Sparkplug B edge nodes.

JSON: every signal `i` is published to `<prefix>/<path>` as
`{"value": v, "timestamp": <ms>, "quality": 192}`.

Sparkplug B: `--nodes` edge nodes `edge<n>` in group `--group`, each with `--devices`
devices `dev<d>` whose metrics are the signals. Each node publishes NBIRTH (with `bdSeq`,
and an NDEATH with the same `bdSeq` as its MQTT will), a DBIRTH per device with metric
aliases, then DDATA by alias, `seq` counting 0-255 per node over every message. A
`Node Control/Rebirth` NCMD makes the node publish its BIRTHs again. On SIGTERM nodes
publish DDEATHs and NDEATH and disconnect.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from otbus_core.sparkplug import DT, REBIRTH_METRIC, decode_payload, encode_payload
from otbus_ot_simulator.signals import Signal, plant

__all__ = ["publish_json", "run_sparkplug"]

_json = msgspec.json.Encoder()


def _client(url: str, client_id: str) -> tuple[mqtt.Client, str, int]:
    u = urlsplit(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    return c, u.hostname or "127.0.0.1", u.port or 1883


def _stopper() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _ms() -> int:
    return time.time_ns() // 1_000_000


def publish_json(
    url: str, prefix: str, tags: int, rate: float, qos: int, seconds: float | None, count: int | None
) -> int:
    """Publish `rate` messages/s round-robin over `tags` signals; returns how many were published."""
    signals = plant(tags)
    rng = random.Random(5)
    c, host, port = _client(url, f"otbus-sim-json-{random.randrange(1 << 30)}")
    c.connect(host, port, 30)
    c.loop_start()
    stop = _stopper()
    print(f"simulator: publishing JSON to {prefix}/... at {rate:.0f}/s (QoS {qos})", flush=True)  # noqa: T201
    sent = 0
    started = time.monotonic()
    tick = 0.02
    per_tick = max(1, round(rate * tick))
    infos = []
    while not stop.is_set() and (seconds is None or time.monotonic() - started < seconds):
        t = time.time()
        for _ in range(per_tick):
            s = signals[sent % len(signals)]
            body = _json.encode({"value": s.sample(t, rng), "timestamp": int(t * 1000), "quality": 192})
            infos.append(c.publish(f"{prefix}/{s.path}", body, qos=qos))
            sent += 1
            if count is not None and sent >= count:
                stop.set()
                break
        time.sleep(max(0.0, tick - (time.time() - t)))
    for info in infos[-1000:]:
        info.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()
    print(f"simulator: published {sent} JSON messages to {prefix}/...", flush=True)  # noqa: T201
    return sent


@dataclass
class _Node:
    group: str
    name: str
    devices: dict[str, list[Signal]]
    client: mqtt.Client
    bd_seq: int = 0
    seq: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)
    rebirths: int = 0

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"spBv1.0/{self.group}/{kind}/{self.name}"
        return f"{base}/{device}" if device else base

    def birth(self, rng: random.Random) -> None:
        with self.lock:
            self.seq = -1
            t = _ms()
            node_metrics = [
                {"name": "bdSeq", "datatype": DT.Int64, "value": self.bd_seq},
                {"name": REBIRTH_METRIC, "datatype": DT.Boolean, "value": False},
            ]
            self.client.publish(self.topic("NBIRTH"), encode_payload(node_metrics, self.next_seq(), t), qos=0)
            for dev, signals in self.devices.items():
                metrics = [_metric(s, i, t, rng, named=True) for i, s in enumerate(signals)]
                self.client.publish(self.topic("DBIRTH", dev), encode_payload(metrics, self.next_seq(), t), qos=0)

    def data(self, rng: random.Random) -> int:
        with self.lock:
            t = _ms()
            n = 0
            for dev, signals in self.devices.items():
                metrics = [_metric(s, i, t, rng, named=False) for i, s in enumerate(signals)]
                self.client.publish(self.topic("DDATA", dev), encode_payload(metrics, self.next_seq(), t), qos=0)
                n += len(metrics)
            return n

    def death(self) -> None:
        with self.lock:
            t = _ms()
            for dev in self.devices:
                self.client.publish(self.topic("DDEATH", dev), encode_payload([], self.next_seq(), t), qos=0)
            body = encode_payload([{"name": "bdSeq", "datatype": DT.Int64, "value": self.bd_seq}], None, t)
            info = self.client.publish(self.topic("NDEATH"), body, qos=0)
            if self.client.is_connected():  # with the broker gone there is no one to tell
                info.wait_for_publish(2)


def _metric(s: Signal, alias: int, t: int, rng: random.Random, named: bool) -> dict[str, Any]:
    v = s.sample(t / 1000, rng)
    dt = DT.Boolean if isinstance(v, bool) else DT.Int32 if isinstance(v, int) else DT.Double
    m: dict[str, Any] = {"alias": alias, "datatype": dt, "value": v, "timestamp": t}
    if named:
        m["name"] = s.path.split("/", 3)[-1] if "/" in s.path else s.path
    return m


def run_sparkplug(
    url: str,
    group: str,
    nodes: int,
    devices: int,
    tags: int,
    interval: float,
    seconds: float | None,
) -> int:
    """Run edge nodes until SIGTERM (or `seconds`); returns the metric values published."""
    signals = plant(tags)
    per_dev = max(1, tags // max(1, nodes * devices))
    stop = _stopper()
    rng = random.Random(7)
    edge: list[_Node] = []
    k = 0
    for n in range(nodes):
        client, host, port = _client(url, f"otbus-sim-{group}-edge{n}-{random.randrange(1 << 30)}")
        devs = {}
        for d in range(devices):
            devs[f"dev{d}"] = signals[k : k + per_dev] or signals[:1]
            k += per_dev
        node = _Node(group, f"edge{n}", devs, client, bd_seq=int(time.time()) % 256)
        will = encode_payload([{"name": "bdSeq", "datatype": DT.Int64, "value": node.bd_seq}], None, _ms())
        client.will_set(node.topic("NDEATH"), will, qos=1)

        def on_message(_c: Any, nd: _Node, msg: mqtt.MQTTMessage) -> None:
            try:
                p = decode_payload(bytes(msg.payload))
            except Exception:
                return
            if any(m.name == REBIRTH_METRIC and m.boolean_value for m in p.metrics):
                nd.rebirths += 1
                nd.birth(rng)

        client.user_data_set(node)
        client.on_message = on_message
        client.connect(host, port, 30)
        client.subscribe(node.topic("NCMD"), qos=1)
        client.loop_start()
        node.birth(rng)
        edge.append(node)
    started = time.monotonic()
    published = 0
    shape = f"{nodes} nodes x {devices} devices, {per_dev} metrics each"
    print(f"simulator: Sparkplug B group {group}: {shape}", flush=True)  # noqa: T201
    while not stop.is_set() and (seconds is None or time.monotonic() - started < seconds):
        t0 = time.monotonic()
        for node in edge:
            published += node.data(rng)
        stop.wait(max(0.0, interval - (time.monotonic() - t0)))
    for node in edge:
        node.death()
        node.client.disconnect()
        node.client.loop_stop()
    print(f"simulator: published {published} Sparkplug metric values", flush=True)  # noqa: T201
    return published
