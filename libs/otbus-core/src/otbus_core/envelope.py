"""CloudEvents 1.0, Kafka protocol binding, binary content mode.

Attributes travel as `ce_*` headers, the data as the Kafka value (Avro). Extensions:
`ce_tenant`, `ce_correlationid`, `ce_causationid`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from confluent_kafka import Message

from otbus_core.codec import AVRO_CONTENT_TYPE
from otbus_core.exceptions import DecodeError
from otbus_core.ids import uuid7
from otbus_core.kafka import headers_of, position
from otbus_core.topics import tenant_of_topic

__all__ = [
    "SPECVERSION",
    "TYPE_DEAD_LETTER",
    "TYPE_RAW_READINGS",
    "TYPE_TAG",
    "Envelope",
    "ce_headers",
    "envelope_of",
    "is_utf8",
    "micros_to_rfc3339",
    "now_micros",
]

TYPE_RAW_READINGS = "otbus.ot.raw.readings.v1"
TYPE_TAG = "otbus.ot.tag.v1"
TYPE_DEAD_LETTER = "otbus.ot.deadletter.v1"
SPECVERSION = "1.0"

# the attributes read, in the order of the Envelope's fields after the spec version
_READ = (
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_tenant",
    "ce_time",
    "ce_subject",
    "ce_dataschema",
    "content-type",
    "ce_correlationid",
    "ce_causationid",
)
_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_tenant")


def now_micros() -> int:
    return time.time_ns() // 1000


_last_second: list[tuple[int, str]] = [(-1, "")]


def micros_to_rfc3339(us: int) -> str:
    sec, frac = divmod(us, 1_000_000)
    cached_sec, prefix = _last_second[0]
    if sec != cached_sec:  # events come in bursts within the same second
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _last_second[0] = (sec, prefix)
    return f"{prefix}.{frac:06d}Z"


def ce_headers(
    id: str,
    source: str,
    type: str,
    tenant: str,
    time: str,
    subject: str | None = None,
    dataschema: str | None = None,
    correlationid: str | None = None,
    causationid: str | None = None,
    content_type: str = AVRO_CONTENT_TYPE,
) -> list[tuple[str, str]]:
    """CloudEvents binary-mode Kafka headers (what `Envelope.headers()` returns, without the object)."""
    h = [
        ("ce_specversion", SPECVERSION),
        ("ce_id", id),
        ("ce_source", source),
        ("ce_type", type),
        ("ce_time", time),
        ("ce_tenant", tenant),
        ("content-type", content_type),
    ]
    if subject is not None:
        h.append(("ce_subject", subject))
    if dataschema is not None:
        h.append(("ce_dataschema", dataschema))
    if correlationid is not None:
        h.append(("ce_correlationid", correlationid))
    if causationid is not None:
        h.append(("ce_causationid", causationid))
    return h


class Envelope(NamedTuple):
    """CloudEvents attributes of one record (a tuple: made for every record, so made cheaply)."""

    id: str
    source: str
    type: str
    tenant: str
    time: str
    subject: str | None = None
    dataschema: str | None = None
    content_type: str = AVRO_CONTENT_TYPE
    correlationid: str | None = None
    causationid: str | None = None

    @classmethod
    def new(
        cls,
        *,
        source: str,
        type: str,
        tenant: str,
        time_us: int | None = None,
        id: str | None = None,
        **kw: str | None,
    ) -> Envelope:
        return cls(
            id=id or uuid7(),
            source=source,
            type=type,
            tenant=tenant,
            time=micros_to_rfc3339(time_us if time_us is not None else now_micros()),
            **kw,  # type: ignore[arg-type]
        )

    def with_(self, **kw: str | None) -> Envelope:
        return self._replace(**kw)  # type: ignore[arg-type]

    def headers(self) -> list[tuple[str, str]]:
        return ce_headers(
            self.id,
            self.source,
            self.type,
            self.tenant,
            self.time,
            self.subject,
            self.dataschema,
            self.correlationid,
            self.causationid,
            self.content_type,
        )

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes | str | None]] | None) -> Envelope:
        raw = dict(headers or ())  # only the attributes we read are decoded; other headers are not ours
        missing = [k for k in _REQUIRED if raw.get(k) is None]
        if missing:
            raise DecodeError(f"CloudEvents header(s) missing: {', '.join(missing)}")
        try:
            h = [None if (v := raw.get(k)) is None else v.decode() if isinstance(v, bytes) else v for k in _READ]
        except UnicodeDecodeError:
            bad = next(k for k in _READ if isinstance(b := raw.get(k), bytes) and not is_utf8(b))
            raise DecodeError(f"header {bad} is not UTF-8") from None
        if h[0] != SPECVERSION:
            raise DecodeError(f"ce_specversion {h[0]!r} is not {SPECVERSION}")
        return cls(h[1], h[2], h[3], h[4], h[5] or "", h[6], h[7], h[8] or AVRO_CONTENT_TYPE, h[9], h[10])  # type: ignore[arg-type]


def is_utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


def envelope_of(msg: Message) -> tuple[str, Envelope]:
    """The tenant (from the topic name) and the envelope of a consumed message.

    Raises DecodeError when the headers are missing or unreadable, or when `ce_tenant`
    claims another tenant than the topic the message is on.
    """
    tenant = tenant_of_topic(position(msg)[0])
    env = Envelope.from_headers(headers_of(msg))
    if env.tenant != tenant:
        raise DecodeError(f"ce_tenant {env.tenant!r} does not match the topic's tenant {tenant!r}")
    return tenant, env
