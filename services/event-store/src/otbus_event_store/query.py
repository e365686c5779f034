"""Queries over stored events (SQLAlchemy Core), always inside the caller's tenant.

Each read runs in a transaction that switches to the `otbus_query` role and sets
`otbus.tenant`, so PostgreSQL's row-level security applies on top of the filter.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, func, literal, select, text, tuple_
from sqlalchemy.sql import Select

__all__ = ["EventFilter", "EventQueries", "decode_cursor", "encode_cursor"]

_AS_QUERY_ROLE = text("SET LOCAL ROLE otbus_query")


def encode_cursor(time: datetime, event_id: str) -> str:
    raw = f"{time.astimezone(UTC).isoformat()}|{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, event_id = raw.split("|", 1)
        return datetime.fromisoformat(ts), str(uuid.UUID(event_id))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError("cursor is not one this API returned") from None


@dataclass(frozen=True, slots=True)
class EventFilter:
    types: tuple[str, ...] = ()
    subject_prefix: str | None = None
    source: str | None = None
    correlation_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    order: str = "desc"
    cursor: tuple[datetime, str] | None = None
    limit: int = 100


class EventQueries:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.table = Table("otbus_events", MetaData(), autoload_with=engine)

    def _tenant_tx(self, conn: Connection, tenant: str) -> None:
        conn.execute(_AS_QUERY_ROLE)
        conn.execute(select(func.set_config("otbus.tenant", tenant, True)))

    def events(self, tenant: str, f: EventFilter) -> tuple[list[dict[str, Any]], str | None]:
        t = self.table
        stmt: Select[Any] = select(
            t.c.event_id,
            t.c.time,
            t.c.type,
            t.c.source,
            t.c.subject,
            t.c.correlation_id,
            t.c.causation_id,
            t.c.dataschema,
            t.c.payload,
            t.c.topic,
            t.c.partition,
            t.c.offset,
            t.c.stored_at,
        ).where(t.c.tenant == tenant)
        if f.types:
            stmt = stmt.where(t.c.type.in_(f.types))
        if f.subject_prefix:
            stmt = stmt.where(t.c.subject.startswith(f.subject_prefix, autoescape=True))
        if f.source:
            stmt = stmt.where(t.c.source == f.source)
        if f.correlation_id:
            stmt = stmt.where(t.c.correlation_id == f.correlation_id)
        if f.since:
            stmt = stmt.where(t.c.time >= f.since)
        if f.until:
            stmt = stmt.where(t.c.time < f.until)
        key = tuple_(t.c.time, t.c.event_id)
        if f.cursor:
            after = tuple_(literal(f.cursor[0], t.c.time.type), literal(f.cursor[1], t.c.event_id.type))
            stmt = stmt.where(key > after if f.order == "asc" else key < after)
        if f.order == "asc":
            stmt = stmt.order_by(t.c.time.asc(), t.c.event_id.asc())
        else:
            stmt = stmt.order_by(t.c.time.desc(), t.c.event_id.desc())
        stmt = stmt.limit(f.limit + 1)
        with self.engine.begin() as conn:
            self._tenant_tx(conn, tenant)
            rows = conn.execute(stmt).mappings().all()
        more = len(rows) > f.limit
        rows = rows[: f.limit]
        events = [
            {
                "event_id": str(r["event_id"]),
                "time": r["time"].isoformat(),
                "tenant": tenant,
                "type": r["type"],
                "source": r["source"],
                "subject": r["subject"],
                "correlation_id": r["correlation_id"],
                "causation_id": r["causation_id"],
                "dataschema": r["dataschema"],
                "payload": r["payload"],
                "kafka": {"topic": r["topic"], "partition": r["partition"], "offset": r["offset"]},
                "stored_at": r["stored_at"].isoformat(),
            }
            for r in rows
        ]
        next_cursor = encode_cursor(rows[-1]["time"], str(rows[-1]["event_id"])) if more and rows else None
        return events, next_cursor

    def statistics(self, tenant: str, since: datetime, until: datetime) -> dict[str, Any]:
        t = self.table
        window = (t.c.tenant == tenant, t.c.time >= since, t.c.time < until)
        minute = func.date_trunc("minute", t.c.time).label("minute")
        with self.engine.begin() as conn:
            self._tenant_tx(conn, tenant)
            by_type = conn.execute(select(t.c.type, func.count()).where(*window).group_by(t.c.type)).all()
            per_minute = conn.execute(
                select(minute, func.count()).where(*window).group_by(minute).order_by(minute)
            ).all()
        return {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "total": sum(int(c) for _, c in by_type),
            "by_type": {ty: int(c) for ty, c in by_type},
            "per_minute": [{"minute": m.isoformat(), "count": int(c)} for m, c in per_minute],
        }

    def ping(self) -> float:
        with self.engine.connect() as conn:
            started = datetime.now(UTC)
            conn.execute(select(1))
            return (datetime.now(UTC) - started).total_seconds() * 1000
