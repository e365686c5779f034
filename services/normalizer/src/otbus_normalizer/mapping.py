"""Raw reading -> ISA-95 tag record: path template, type inference and coercion, quality."""

from __future__ import annotations

import functools
import json
import math
import re
import string
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from otbus_core.exceptions import ConfigError, PoisonRecord
from otbus_core.ids import derive_uuid7, uuid7_seq_derived
from otbus_core.memo import BoundedDict
from otbus_core.raw import NONE, unpack_values
from otbus_normalizer.quality import BAD, map_quality

__all__ = [
    "CONTEXT_KEYS",
    "TAG_SALT",
    "PathTemplate",
    "RawColumns",
    "Reading",
    "TagMapper",
    "coerce_value",
    "columns",
    "raw_columns",
    "signal_type_of",
    "split_tag",
]

CONTEXT_KEYS = ("site", "area", "line", "equipment")
TEMPLATE_FIELDS = frozenset({*CONTEXT_KEYS, "signal_type", "tag_name", "source_id", "protocol"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_PROVIDER = re.compile(r"^\[[^\]]*\]")
_OPCUA_NODE = re.compile(r"^(?:ns=\d+;)?[isgb]=")

# Declared source types (Ignition, Python, OPC-UA, Sparkplug, Modbus names) -> otbus type.
_TYPES: dict[str, str] = {}
for _t, _names in {
    "BOOLEAN": "bool boolean bit coil",
    "INT64": "int long integer short byte sbyte int1 int2 int4 int8 int16 int32 int64 "
    "uint uint8 uint16 uint32 uint64 uint1 uint2 uint4 word dword",
    "DOUBLE": "float double real decimal float4 float8 float32 float64 number",
    "STRING": "str unicode string text localizedtext",
    "NULL": "nonetype null none",
}.items():
    for _n in _names.split():
        _TYPES[_n] = _t

_KEYWORDS = (
    ("temperature", ("temp",)),
    ("pressure", ("press", "psi", "bar")),
    ("flow", ("flow",)),
    ("level", ("level", "lvl")),
    ("speed", ("speed", "rpm", "velocity")),
    ("vibration", ("vib",)),
    ("current", ("current", "amps")),
    ("voltage", ("volt",)),
    ("power", ("power", "kw")),
    ("humidity", ("humid",)),
    ("torque", ("torque",)),
    ("position", ("position",)),
    ("count", ("count", "counter")),
    ("status", ("status", "state", "running", "alarm", "fault")),
)


class PathTemplate:
    def __init__(self, template: str, key_name: str = "OTBUS_PATH_TEMPLATE") -> None:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        unknown = names - TEMPLATE_FIELDS
        if unknown:
            raise ConfigError(
                f"{key_name}: unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(TEMPLATE_FIELDS)}"
            )
        if "tag_name" not in names:
            raise ConfigError(f"{key_name}: the template must contain {{tag_name}}")
        self.template = template

    def render(self, parts: Mapping[str, str]) -> str:
        return self.template.format_map(parts)


def _safe(segment: str) -> str:
    s = _UNSAFE.sub("_", segment.strip()).strip("_")
    return s or "_"


def split_tag(tag: str) -> list[str]:
    """Folder segments and name of a source address (Ignition path, OPC-UA node id, topic...)."""
    t = _PROVIDER.sub("", tag.strip())
    t = _OPCUA_NODE.sub("", t)
    sep = "/" if "/" in t else "."
    parts = [p for p in t.split(sep) if p.strip()]
    return parts or [t or "_"]


def signal_type_of(parts: list[str], declared: str | None) -> str:
    if declared:
        return _safe(declared).lower()
    signal = _signal_of_name(parts[-1].lower())
    if signal is not None:
        return signal
    if len(parts) > 1:
        return _safe(parts[-2]).lower()
    return "value"


@functools.lru_cache(maxsize=65_536)
def _signal_of_name(name: str) -> str | None:
    for signal, words in _KEYWORDS:
        if any(w in name for w in words):
            return signal
    return None


def coerce_value(value: Any, declared: str | None) -> tuple[Any, str]:
    """The value as the declared type says, and that type; raises PoisonRecord when it can't be."""
    want = _TYPES.get(declared.strip().lower()) if declared else None
    if want is None:  # no or unknown declaration: infer from the value
        if value is None:
            return None, "NULL"
        if isinstance(value, bool):
            return value, "BOOLEAN"
        if isinstance(value, int):
            return value, "INT64"
        if isinstance(value, float):
            return value, "DOUBLE"
        return str(value), "STRING"
    if value is None:
        return None, want
    try:
        if want == "BOOLEAN":
            if isinstance(value, bool):
                return value, want
            if isinstance(value, int | float) and value in (0, 1):
                return bool(value), want
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
                return value.strip().lower() in ("true", "1"), want
        elif want == "INT64":
            n: int | None = None
            if isinstance(value, bool | int) or (isinstance(value, float) and value.is_integer()):
                n = int(value)
            elif isinstance(value, str):
                n = int(value.strip())
            if n is not None:
                if not -(2**63) <= n < 2**63:
                    raise PoisonRecord(f"value {value!r:.80} is outside the range of INT64")
                return n, want
        elif want == "DOUBLE":
            if isinstance(value, bool):
                return float(value), want
            if isinstance(value, int | float):
                return float(value), want
            if isinstance(value, str):
                return float(value.strip()), want
        elif want == "STRING":
            return (value if isinstance(value, str) else str(value)), want
        elif want == "NULL":
            pass
    except (ValueError, OverflowError):
        pass
    raise PoisonRecord(f"value {value!r:.80} does not fit declared data_type {declared!r}")


class TagMapper:
    """Builds tag records; context = defaults < the adapter's batch context < per-source config."""

    def __init__(
        self,
        template: PathTemplate,
        default_context: Mapping[str, str],
        source_context: Mapping[str, Mapping[str, str]],
    ) -> None:
        self.template = template
        self.default_context = {k: default_context.get(k, "unknown") for k in CONTEXT_KEYS}
        self.source_context = source_context
        self._paths: BoundedDict[tuple[str | None, ...], tuple[str, str, str]] = BoundedDict(_PATH_CACHE)
        self._qualities: BoundedDict[tuple[str, str, int | None], str] = BoundedDict(_QUALITY_CACHE)
        # (tag, declared signal type) -> (tag name, signal type); source id -> its path-safe form
        self._names: BoundedDict[tuple[str, str | None], tuple[str, str]] = BoundedDict(_PATH_CACHE)
        self._sources: BoundedDict[str, str] = BoundedDict(_QUALITY_CACHE)

    def context_for(self, source_id: str, batch_context: Mapping[str, str]) -> dict[str, str]:
        ctx = dict(self.default_context)
        for layer in (batch_context, self.source_context.get(source_id, {})):
            for k in CONTEXT_KEYS:
                v = layer.get(k)
                if v:
                    ctx[k] = _safe(v)
        return ctx

    def naming(
        self, source_id: str, protocol: str, ctx: Mapping[str, str], tag: str, declared: str | None
    ) -> tuple[str, str, str]:
        """(path, signal_type, tag_name) of a tag: the same for every reading of it, so cached.

        A tag's name and signal type do not depend on its source, and a source's safe id not
        on the tag: each is worked out once (several sources often send the same tag names)."""
        named = self._names.get((tag, declared))
        if named is None:
            parts = split_tag(tag)
            named = self._names.put((tag, declared), (_safe(parts[-1]), signal_type_of(parts, declared)))
        tag_name, signal_type = named
        safe_source = self._sources.get(source_id)
        if safe_source is None:
            safe_source = self._sources.put(source_id, _safe(source_id))
        fields = {**ctx, "signal_type": signal_type, "tag_name": tag_name, "source_id": safe_source}
        path = self.template.render({**fields, "protocol": protocol})
        return path, signal_type, tag_name

    def to_tag(self, tenant: str, source_id: str, protocol: str, ctx: Mapping[str, str], r: Reading) -> dict[str, Any]:
        tag = r.tag
        if not tag or not tag.strip():
            raise PoisonRecord("reading has an empty tag")
        value, data_type = coerce_value(r.value, r.data_type or None)
        qkey = (protocol, r.quality, r.quality_code)
        quality = self._qualities.get(qkey)
        if quality is None:  # a source sends few distinct qualities: each mapped once
            quality = self._qualities.put(qkey, map_quality(protocol, r.quality or None, r.quality_code))
        if value.__class__ is float and not math.isfinite(value):
            value, quality = None, BAD  # NaN/Inf carry no value; JSON and SQL cannot hold them
        key = (source_id, protocol, tag, r.attributes.get("signal_type"), *ctx.values())
        naming = self._paths.get(key)
        if naming is None:
            naming = self._paths.put(key, self.naming(source_id, protocol, ctx, tag, r.attributes.get("signal_type")))
        path, signal_type, tag_name = naming
        source_time = r.source_time if r.source_time is not None else r.received_time
        if not _MIN_TIME <= source_time <= _MAX_TIME:
            raise PoisonRecord(f"source time {source_time} µs is outside years 1-9999")
        return {
            "event_id": derive_uuid7(r.id, TAG_SALT),
            "tenant": tenant,
            "path": path,
            "site": ctx["site"],
            "area": ctx["area"],
            "line": ctx["line"],
            "equipment": ctx["equipment"],
            "signal_type": signal_type,
            "tag_name": tag_name,
            "value": value,
            "data_type": data_type,
            "unit": r.unit or r.attributes.get("unit"),
            "quality": quality,
            "quality_code": r.quality_code,
            "source_time": source_time,
            "ingest_time": r.received_time,
            "source_id": source_id,
            "protocol": protocol,
            "source_tag": tag,
            "raw_event_id": r.id,
        }


_NO_ATTRS: Mapping[str, str] = MappingProxyType({})


class Reading(NamedTuple):
    """One reading of a raw batch (row i of its columns)."""

    id: str
    tag: str
    value: Any
    data_type: str
    quality: str
    quality_code: int | None
    source_time: int | None
    received_time: int
    unit: str = ""
    attributes: Mapping[str, str] = _NO_ATTRS

    def as_json(self) -> bytes:
        fields = ("id", "tag", "value", "data_type", "quality", "quality_code", "source_time", "received_time")
        doc = {k: getattr(self, k) for k in fields}
        doc.update(unit=self.unit, attributes=dict(self.attributes))
        return json.dumps(doc, default=str, allow_nan=True).encode()


_MIN_TIME = -62_135_596_800_000_000  # 0001-01-01, microseconds
_MAX_TIME = 253_402_300_799_999_999  # 9999-12-31
_PATH_CACHE = 200_000  # distinct tags remembered per normalizer before the cache starts over
_QUALITY_CACHE = 10_000  # distinct (protocol, quality text, code), and sources


class RawColumns(NamedTuple):
    """The columns of a raw batch, checked; `codes` and `times` still hold `NONE` for absent."""

    tags: list[str]
    values: list[Any]
    data_types: list[str]
    qualities: list[str]
    codes: list[int]
    times: list[int]
    received: int
    units: list[str]
    attributes: list[Mapping[str, str]]
    ids: list[bytes]  # the readings' ids (ASCII)
    tag_ids: list[bytes]  # the ids of their tag records: derive_uuid7(id, TAG_SALT)

    def reading(self, i: int) -> Reading:
        code, t = self.codes[i], self.times[i]
        return Reading(
            self.ids[i].decode(),
            self.tags[i],
            self.values[i],
            self.data_types[i],
            self.qualities[i],
            None if code == NONE else code,
            None if t == NONE else t,
            self.received,
            self.units[i] if self.units else "",
            self.attributes[i] if self.attributes else _NO_ATTRS,
        )


TAG_SALT = "tag"
"""What a reading's id is derived with to make its tag record's event id."""


def raw_columns(batch: Mapping[str, Any]) -> RawColumns:
    """The columns of a raw batch; a batch whose columns disagree in length is poison."""
    tags = batch["tags"]
    n = len(tags)
    cols = [unpack_values(batch), *(batch[k] for k in ("data_types", "qualities", "quality_codes", "source_times"))]
    units, attrs = batch["units"], batch["attributes"]
    if any(len(c) != n for c in cols) or len(units) not in (0, n) or len(attrs) not in (0, n):
        raise PoisonRecord(f"raw batch columns have different lengths (tags: {n})")
    try:
        ids, tag_ids = uuid7_seq_derived(batch["first_id"], n, TAG_SALT) if n else ([], [])
    except ValueError as e:
        raise PoisonRecord(f"first_id {batch['first_id']!r:.60} is not a usable UUIDv7: {e}") from None
    values, data_types, qualities, codes, times = cols
    return RawColumns(
        tags, values, data_types, qualities, codes, times, batch["received_time"], units, attrs, ids, tag_ids
    )


def columns(batch: Mapping[str, Any]) -> list[Reading]:
    """The readings of a raw batch; a batch whose columns disagree in length is poison."""
    cols = raw_columns(batch)
    return [cols.reading(i) for i in range(len(cols.tags))]
