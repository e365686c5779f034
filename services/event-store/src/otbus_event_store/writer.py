"""Writes stored events to PostgreSQL: one COPY per batch, idempotent by event id.

The common case is a plain COPY into `otbus_events`. When the batch holds an event
that is already stored (a redelivery), the COPY fails on the key and the batch goes
again through a temporary table and `INSERT ... ON CONFLICT DO NOTHING`. Rows that
PostgreSQL refuses on their own (e.g. a NUL character in JSON) are found one by one
and handed back so the runner can dead-letter them; the rest are written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import psycopg
from psycopg import errors, sql

from otbus_core.exceptions import TransientError

__all__ = ["COLUMNS", "EventWriter", "StoredEvent"]

log = logging.getLogger(__name__)

COLUMNS = (
    "event_id",
    "time",
    "tenant",
    "type",
    "source",
    "subject",
    "correlation_id",
    "causation_id",
    "dataschema",
    "content_type",
    "payload",
    "topic",
    "partition",
    "offset",
)
_COLS = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
_COPY = sql.SQL("COPY otbus_events ({}) FROM STDIN").format(_COLS)
_COPY_STAGE = sql.SQL("COPY otbus_stage ({}) FROM STDIN").format(_COLS)
_STAGE = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS otbus_stage (LIKE otbus_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_MERGE = sql.SQL("INSERT INTO otbus_events ({0}) SELECT {0} FROM otbus_stage ON CONFLICT DO NOTHING").format(_COLS)
_INSERT_ONE = sql.SQL("INSERT INTO otbus_events ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    _COLS, sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS))
)


_ROW_FAULT_CLASSES = ("22", "23", "54")
"""SQLSTATE classes that can be one row's fault: data exception (e.g. NUL in JSON), integrity,
program limit (e.g. an index row too large). Everything else (connection, shutdown, a missing
table, permissions) is the database's state and is retried, never blamed on the events."""


def _transient(e: psycopg.Error) -> bool:
    state = e.sqlstate
    return state is None or state[:2] not in _ROW_FAULT_CLASSES


class StoredEvent(NamedTuple):
    """One row of `otbus_events`, in COPY column order (a tuple, so COPY takes it as it is)."""

    event_id: str
    time: str | datetime  # RFC 3339 text as it came in ce_time; PostgreSQL parses and checks it
    tenant: str
    type: str
    source: str
    subject: str | None
    correlation_id: str | None
    causation_id: str | None
    dataschema: str | None
    content_type: str | None
    payload: str  # JSON text
    topic: str
    partition: int
    offset: int

    def row(self) -> tuple[object, ...]:
        return self


class EventWriter:
    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self.duplicates = 0

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    self.conninfo, autocommit=False, application_name="otbus-event-store", connect_timeout=10
                )
            except psycopg.OperationalError as e:
                raise TransientError(f"database unreachable: {e}") from e
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, events: Sequence[StoredEvent]) -> list[tuple[StoredEvent, str]]:
        """Store `events` durably (committed on return). Returns the ones PostgreSQL refused, with why."""
        if not events:
            return []
        conn = self._connection()
        try:
            try:
                with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY) as cp:
                    for ev in events:
                        cp.write_row(ev)
                return []
            except errors.UniqueViolation:
                return self._merge(conn, events)
            except psycopg.Error as e:
                if _transient(e):
                    raise
                log.warning("batch of %d refused (%s); writing row by row", len(events), e)
                return self._one_by_one(conn, events)
        except psycopg.Error as e:
            self.close()
            raise TransientError(f"database write failed: {e}") from e

    def _merge(
        self, conn: psycopg.Connection[tuple[object, ...]], events: Sequence[StoredEvent]
    ) -> list[tuple[StoredEvent, str]]:
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_STAGE)
                with cur.copy(_COPY_STAGE) as cp:
                    for ev in events:
                        cp.write_row(ev)
                cur.execute(_MERGE)
                inserted = cur.rowcount
            self.duplicates += len(events) - inserted
            log.info("redelivered batch: %d of %d events were already stored", len(events) - inserted, len(events))
            return []
        except psycopg.Error as e:
            if _transient(e):
                raise
            log.warning("merge of %d refused (%s); writing row by row", len(events), e)
            return self._one_by_one(conn, events)

    def _one_by_one(
        self, conn: psycopg.Connection[tuple[object, ...]], events: Sequence[StoredEvent]
    ) -> list[tuple[StoredEvent, str]]:
        refused: list[tuple[StoredEvent, str]] = []
        with conn.transaction(), conn.cursor() as cur:
            for ev in events:
                try:
                    with conn.transaction():  # a savepoint per row
                        cur.execute(_INSERT_ONE, ev)
                        if cur.rowcount == 0:
                            self.duplicates += 1
                except psycopg.Error as e:
                    if _transient(e):
                        raise
                    refused.append((ev, f"PostgreSQL refused the event: {e.diag.message_primary or e}"))
        return refused
