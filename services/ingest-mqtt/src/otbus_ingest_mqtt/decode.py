"""Payload decoders: JSON with a field mapping, bare values, and Sparkplug B with its state.

Each returns readings, or raises `Rejected` with the reason (the message goes to the DLQ).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from otbus_core.envelope import now_micros
from otbus_core.exceptions import DecodeError
from otbus_core.publisher import Reading
from otbus_core.sparkplug import (
    DT,
    REBIRTH_METRIC,
    SparkplugTopic,
    decode_payload,
    encode_payload,
    metric_quality,
    metric_value,
    parse_topic,
    type_name,
)
from otbus_ingest_mqtt.config import JsonMapping

__all__ = ["JsonDecoder", "Rejected", "SparkplugDecoder", "ValueDecoder"]

log = logging.getLogger(__name__)

_SCALE = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
_json = msgspec.json.Decoder()
STALE = 500
"""Sparkplug quality of metrics whose node or device died (Ignition's 'stale': BAD)."""


class Rejected(Exception):
    def __init__(self, reason: str, error_type: str = "InvalidPayload") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


def _get(doc: Any, path: str) -> Any:
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(path)
    return cur


def _scalar(v: Any, where: str) -> bool | int | float | str | None:
    if v is None or isinstance(v, bool | int | float | str):
        if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
            return float(v)
        return v
    raise Rejected(f"{where}: a value must be a number, bool, string or null, not {type(v).__name__}", "WrongType")


class JsonDecoder:
    def __init__(self, mapping: JsonMapping) -> None:
        self.m = mapping

    def __call__(self, topic: str, payload: bytes) -> list[Reading]:
        try:
            doc = _json.decode(payload)
        except msgspec.DecodeError as e:
            raise Rejected(f"not JSON: {e}", "InvalidJson") from None
        items = doc if isinstance(doc, list) else [doc]
        return [self._one(topic, item, i if isinstance(doc, list) else None) for i, item in enumerate(items)]

    def _one(self, topic: str, item: Any, index: int | None) -> Reading:
        m = self.m
        at = f"item {index}: " if index is not None else ""
        if not isinstance(item, dict):
            if index is None and m.value == "value":  # a bare JSON value on a JSON topic
                return Reading(topic, _scalar(item, "payload"), now_micros())
            raise Rejected(f"{at}expected an object with '{m.value}'", "WrongType")
        try:
            value = _scalar(_get(item, m.value), f"{at}field '{m.value}'")
        except KeyError:
            raise Rejected(f"{at}field '{m.value}' is missing", "MissingField") from None
        tag = topic
        if m.tag:
            try:
                tag = str(_get(item, m.tag))
            except KeyError:
                raise Rejected(f"{at}field '{m.tag}' (the tag) is missing", "MissingField") from None
        t = self._time(item, at)
        code, text = self._quality(item, at)
        data_type = str(_opt(item, m.data_type) or "")
        unit = str(_opt(item, m.unit) or "")
        return Reading(tag, value, t, code, text, data_type, unit)

    def _time(self, item: Any, at: str) -> int:
        if not self.m.timestamp:
            return now_micros()
        try:
            ts = _get(item, self.m.timestamp)
        except KeyError:
            return now_micros()
        if isinstance(ts, bool) or ts is None:
            raise Rejected(f"{at}field '{self.m.timestamp}': not a timestamp", "WrongType")
        if isinstance(ts, int | float):
            us = int(ts * _SCALE[self.m.timestamp_unit])
        elif isinstance(ts, str):
            try:
                d = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            except ValueError:
                raise Rejected(f"{at}field '{self.m.timestamp}': {ts!r:.40} is not ISO 8601", "WrongType") from None
            if d.tzinfo is None:
                raise Rejected(f"{at}field '{self.m.timestamp}': {ts!r:.40} has no time zone", "WrongType")
            us = int(d.timestamp() * 1_000_000)
        else:
            raise Rejected(f"{at}field '{self.m.timestamp}': not a timestamp", "WrongType")
        if not -62_135_596_800_000_000 <= us <= 253_402_300_799_999_999:
            raise Rejected(f"{at}field '{self.m.timestamp}': {ts} is out of range", "WrongType")
        return us

    def _quality(self, item: Any, at: str) -> tuple[int | None, str]:
        q = _opt(item, self.m.quality)
        if q is None:
            return None, ""
        if isinstance(q, bool):
            return (192 if q else 0), ""
        if isinstance(q, int):
            return q, ""
        if isinstance(q, str):
            return None, q
        raise Rejected(f"{at}field '{self.m.quality}': a quality is a number or text", "WrongType")


def _opt(item: Any, path: str | None) -> Any:
    if not path:
        return None
    try:
        return _get(item, path)
    except KeyError:
        return None


class ValueDecoder:
    """The payload is the value itself: a JSON scalar (21.5, true, "x") or plain text."""

    def __call__(self, topic: str, payload: bytes) -> list[Reading]:
        try:
            v = _json.decode(payload)
        except msgspec.DecodeError:
            try:
                v = payload.decode().strip()
            except UnicodeDecodeError:
                raise Rejected("payload is neither JSON nor UTF-8 text", "InvalidPayload") from None
        return [Reading(topic, _scalar(v, "payload"), now_micros())]


# -- Sparkplug B ----------------------------------------------------------------------------


@dataclass
class _Metrics:
    by_alias: dict[int, tuple[str, int]] = field(default_factory=dict)  # alias -> (name, datatype)
    types: dict[str, int] = field(default_factory=dict)  # name -> datatype
    # (name, datatype) or alias -> (tag, type name, skip, datatype), filled as data arrives
    tags: dict[tuple[str, int], tuple[str, str, bool, int]] = field(default_factory=dict)
    alias_tags: dict[int, tuple[str, str, bool, int]] = field(default_factory=dict)
    alive: bool = False


def _tag_info(base: str, name: str, datatype: int) -> tuple[str, str, bool, int]:
    skip = name == "bdSeq" or name.startswith("Node Control/")
    return f"{base}/{name}", type_name(datatype), skip, datatype


def _doc_of(m: _Metrics) -> dict[str, Any]:
    return {"alive": m.alive, "by_alias": [[a, n, dt] for a, (n, dt) in m.by_alias.items()], "types": m.types}


def _metrics_of(doc: dict[str, Any]) -> _Metrics:
    return _Metrics(
        by_alias={int(a): (str(n), int(dt)) for a, n, dt in doc["by_alias"]},
        types={str(k): int(v) for k, v in doc["types"].items()},
        alive=bool(doc["alive"]),
    )


_PLAIN = frozenset({"int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value"})
_SIGNED = frozenset({int(DT.Int8), int(DT.Int16), int(DT.Int32), int(DT.Int64)})
_LONG_LIMIT = 2**63


@dataclass
class _Node:
    seq: int | None = None  # last seq seen
    bd_seq: int | None = None
    metrics: _Metrics = field(default_factory=_Metrics)
    devices: dict[str, _Metrics] = field(default_factory=dict)
    last_rebirth_request: float = 0.0


@dataclass
class SparkplugStats:
    births: int = 0
    deaths: int = 0
    seq_gaps: int = 0
    rebirth_requests: int = 0


class SparkplugDecoder:
    """Host-side Sparkplug B state per edge node: alias tables from BIRTHs, `seq` checks,
    DEATHs marking every metric of the node (or device) BAD.

    `request_rebirth(group, edge_node)` is called (rate-limited) on a sequence gap or data
    for an unknown alias; the source publishes the NCMD.

    With `state_path`, the BIRTH tables are kept on disk and read back at start: data waiting
    in a persistent session while the adapter was away is then decoded, not dead-lettered for
    want of its BIRTH. The file is rewritten `save_delay_s` after a BIRTH or DEATH (one write
    for a burst: an edge node starting 100 devices rewrote its growing tables 100 times, 1.3 s
    of CPU), and by `flush()` when the source stops. A crash in between loses only the tables
    of that last moment, and their data asks for a rebirth as if no state had been kept.
    """

    def __init__(
        self,
        request_rebirth: Callable[[str, str], None] | None = None,
        rebirth_every_s: float = 5.0,
        state_path: Path | None = None,
        save_delay_s: float = 0.5,
    ) -> None:
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.request_rebirth = request_rebirth
        self.rebirth_every_s = rebirth_every_s
        self.stats = SparkplugStats()
        self.state_path = state_path
        self.save_delay_s = save_delay_s
        self._lock = threading.Lock()  # the MQTT thread decodes, a timer thread saves
        self._saver: threading.Timer | None = None
        if state_path is not None and state_path.exists():
            self._load(state_path)

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
            for n in doc["nodes"]:
                node = _Node(bd_seq=n["bd_seq"], metrics=_metrics_of(n["metrics"]))
                node.devices = {d: _metrics_of(m) for d, m in n["devices"].items()}
                self.nodes[(n["group"], n["edge_node"])] = node
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("sparkplug state %s cannot be read (%s): waiting for BIRTHs", path, e)
            self.nodes = {}

    def _save(self) -> None:
        """Write the tables `save_delay_s` from now (called with the lock held)."""
        if self.state_path is None or self._saver is not None:
            return
        self._saver = threading.Timer(self.save_delay_s, self.flush)
        self._saver.daemon = True
        self._saver.start()

    def flush(self) -> None:
        """Write the tables now if a change waits to be written."""
        with self._lock:
            if self._saver is None:
                return
            self._saver.cancel()
            self._saver = None
            self._write_state()

    def _write_state(self) -> None:
        if self.state_path is None:
            return
        doc = {
            "nodes": [
                {
                    "group": g,
                    "edge_node": e,
                    "bd_seq": node.bd_seq,
                    "metrics": _doc_of(node.metrics),
                    "devices": {d: _doc_of(m) for d, m in node.devices.items()},
                }
                for (g, e), node in self.nodes.items()
            ]
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.state_path)

    def __call__(self, topic: str, payload: bytes) -> list[Reading]:
        with self._lock:
            return self._decode(topic, payload)

    def _decode(self, topic: str, payload: bytes) -> list[Reading]:
        t = parse_topic(topic)
        if t is None:
            return []  # STATE and other non-data topics carry no readings
        if t.message_type in ("NCMD", "DCMD"):
            return []  # commands to nodes (ours included)
        try:
            p = decode_payload(payload)
        except DecodeError as e:
            raise Rejected(str(e), "InvalidSparkplug") from None
        node = self.nodes.setdefault(t.node_key, _Node())
        kind = t.message_type
        if kind == "NDEATH":
            return self._node_death(t, node, p)
        if kind == "DDEATH":
            self._check_seq(t, node, p)
            return self._device_death(t, node, p)
        if kind == "NBIRTH":
            return self._node_birth(t, node, p)
        self._check_seq(t, node, p)
        if kind == "DBIRTH":
            return self._device_birth(t, node, p)
        metrics = node.metrics if kind == "NDATA" else node.devices.get(t.device or "")
        if metrics is None or not metrics.alive:
            self._rebirth(t, node)
            what = "NBIRTH" if kind == "NDATA" else f"DBIRTH of device {t.device!r}"
            raise Rejected(f"{kind} before the {what}: aliases unknown (rebirth requested)", "MissingBirth")
        try:
            return self._data(t, metrics, p)
        except Rejected as e:
            if e.error_type == "UnknownAlias":
                self._rebirth(t, node)
            raise

    # births and deaths

    def _node_birth(self, t: SparkplugTopic, node: _Node, p: Any) -> list[Reading]:
        node.metrics = _Metrics(alive=True)
        node.devices = {}
        node.seq = p.seq if p.HasField("seq") else 0
        for m in p.metrics:
            if m.name == "bdSeq":
                node.bd_seq = int(metric_value(m, m.datatype or DT.Int64) or 0)
        self.stats.births += 1
        out = self._birth_readings(t, node.metrics, p)
        self._save()
        return out

    def _device_birth(self, t: SparkplugTopic, node: _Node, p: Any) -> list[Reading]:
        metrics = node.devices[t.device or ""] = _Metrics(alive=True)
        self.stats.births += 1
        out = self._birth_readings(t, metrics, p)
        self._save()
        return out

    def _birth_readings(self, t: SparkplugTopic, metrics: _Metrics, p: Any) -> list[Reading]:
        for m in p.metrics:
            if not m.name:
                continue
            metrics.types[m.name] = m.datatype
            if m.HasField("alias"):
                metrics.by_alias[m.alias] = (m.name, m.datatype)
        return self._data(t, metrics, p)

    def _node_death(self, t: SparkplugTopic, node: _Node, p: Any) -> list[Reading]:
        bd = None
        for m in p.metrics:
            if m.name == "bdSeq":
                bd = int(metric_value(m, m.datatype or DT.Int64) or 0)
        if bd is not None and node.bd_seq is not None and bd != node.bd_seq:
            return []  # the death of an earlier session (its will arrived late): not this one
        self.stats.deaths += 1
        ts = _ms_to_us(p.timestamp) if p.HasField("timestamp") else now_micros()
        out = self._stale(t, None, node.metrics, ts, "node death (NDEATH)")
        for device, metrics in node.devices.items():
            out += self._stale(t, device, metrics, ts, "node death (NDEATH)")
        node.metrics.alive = False
        for metrics in node.devices.values():
            metrics.alive = False
        node.seq = None
        self._save()
        return out

    def _device_death(self, t: SparkplugTopic, node: _Node, p: Any) -> list[Reading]:
        metrics = node.devices.get(t.device or "")
        if metrics is None:
            return []
        self.stats.deaths += 1
        ts = _ms_to_us(p.timestamp) if p.HasField("timestamp") else now_micros()
        out = self._stale(t, t.device, metrics, ts, "device death (DDEATH)")
        metrics.alive = False
        self._save()
        return out

    def _stale(self, t: SparkplugTopic, device: str | None, metrics: _Metrics, ts: int, why: str) -> list[Reading]:
        if not metrics.alive:
            return []
        base = _base(t.group, t.edge_node, device)
        return [
            Reading(f"{base}/{name}", None, ts, STALE, "", type_name(dt), "", {"error": why})
            for name, dt in metrics.types.items()
            if name != "bdSeq" and not name.startswith("Node Control/")
        ]

    # data

    def _data(self, t: SparkplugTopic, metrics: _Metrics, p: Any) -> list[Reading]:
        base = _base(t.group, t.edge_node, t.device)
        default_ts = p.timestamp if p.HasField("timestamp") else None
        now_us = None
        out: list[Reading] = []
        cache = metrics.tags
        by_alias = metrics.alias_tags
        append = out.append
        new = tuple.__new__
        for m in p.metrics:
            # per metric once: (its tag, its type's name, whether it is a reading at all, its datatype)
            name = m.name
            if name:
                dt = m.datatype or metrics.types.get(name, 0)
                info = cache.get((name, dt))
                if info is None:
                    info = cache[(name, dt)] = _tag_info(base, name, dt)
            else:
                alias = m.alias
                info = by_alias.get(alias)
                if info is None or (alias == 0 and not m.HasField("alias")):  # no alias at all reads as 0
                    known = metrics.by_alias.get(alias)
                    if known is None or not m.HasField("alias"):
                        raise Rejected(f"metric alias {alias} is not in the BIRTH (rebirth needed)", "UnknownAlias")
                    info = by_alias[alias] = _tag_info(base, *known)
                dt = info[3]
            if info[2]:
                continue
            field = m.WhichOneof("value")
            if m.is_null or field is None:
                value: Any = None
            elif field in _PLAIN and dt not in _SIGNED:
                value = getattr(m, field)
                if field == "long_value" and value >= _LONG_LIMIT:
                    value = float(value)  # UInt64 beyond a signed long
            else:
                try:
                    value = metric_value(m, dt)
                except DecodeError as e:
                    log.debug("%s", e)
                    continue  # DataSet, Template, arrays: not readings
            if m.HasField("timestamp"):
                ts = m.timestamp * 1000
            elif default_ts is not None:
                ts = default_ts * 1000
            else:
                ts = now_us = now_us or now_micros()
            quality = metric_quality(m) if m.HasField("properties") else None
            # tuple.__new__ with every field: a third of the time of Reading(...), whose __new__ is Python
            append(new(Reading, (info[0], value, ts, quality, "", info[1], "", None)))
        return out

    def _check_seq(self, t: SparkplugTopic, node: _Node, p: Any) -> None:
        if not p.HasField("seq"):
            return
        seq = p.seq
        if node.seq is not None and seq != (node.seq + 1) % 256:
            self.stats.seq_gaps += 1
            log.warning(
                "sparkplug %s/%s: seq %d after %d: messages lost; requesting a rebirth", *t.node_key, seq, node.seq
            )
            self._rebirth(t, node)
        node.seq = seq

    def _rebirth(self, t: SparkplugTopic, node: _Node) -> None:
        now = time.monotonic()
        if self.request_rebirth is None or now - node.last_rebirth_request < self.rebirth_every_s:
            return
        node.last_rebirth_request = now
        self.stats.rebirth_requests += 1
        self.request_rebirth(t.group, t.edge_node)


def rebirth_command(timestamp_ms: int | None = None) -> bytes:
    """The NCMD payload asking an edge node to publish its BIRTHs again."""
    ts = timestamp_ms if timestamp_ms is not None else time.time_ns() // 1_000_000
    return encode_payload([{"name": REBIRTH_METRIC, "datatype": DT.Boolean, "value": True}], None, ts)


def _base(group: str, edge: str, device: str | None) -> str:
    return f"{group}/{edge}/{device}" if device else f"{group}/{edge}"


def _ms_to_us(ms: int) -> int:
    return int(ms) * 1000
