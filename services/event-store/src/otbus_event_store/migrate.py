"""Applies `schemas/sql/NNN_*.sql` in order, once each, under an advisory lock."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from otbus_core.schemas import schemas_root

__all__ = ["ensure_partitions", "migrate", "purge_expired"]

log = logging.getLogger(__name__)
_LOCK = 0x07B05_0001


def migrate(conninfo: str) -> list[str]:
    applied: list[str] = []
    files = sorted((schemas_root() / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS otbus_schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM otbus_schema_migrations")}
            for f in files:
                if f.stem in done:
                    continue
                with conn.transaction():
                    conn.execute(f.read_text().encode())
                    conn.execute("INSERT INTO otbus_schema_migrations (version) VALUES (%s)", (f.stem,))
                applied.append(f.stem)
                log.info("applied migration %s", f.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    return applied


def ensure_partitions(conninfo: str, ahead_days: int) -> None:
    today = datetime.now(UTC).date()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for d in range(-1, ahead_days + 1):
            conn.execute("SELECT otbus_ensure_partition(%s)", (today + timedelta(days=d),))


def purge_expired(conninfo: str, retention_days: int) -> int:
    """Drop daily partitions past retention; delete expired rows of the default partition and relayed rows."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    dropped = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'otbus_events'"
            " AND c.relname ~ '^otbus_events_p[0-9]{8}$'"
        ).fetchall()
        for (name,) in rows:
            day = datetime.strptime(name[-8:], "%Y%m%d").replace(tzinfo=UTC)
            if day + timedelta(days=1) <= cutoff:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
                dropped += 1
                log.info("dropped expired partition %s", name)
        conn.execute("DELETE FROM otbus_events_default WHERE time < %s", (cutoff,))
        conn.execute("DELETE FROM otbus_relay_events WHERE time < %s", (cutoff,))
    return dropped
