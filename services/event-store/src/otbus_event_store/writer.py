"""Writes stored events to PostgreSQL: one COPY per batch, idempotent by event id.

Rows arrive as lines of COPY text (made by the handler straight from the Kafka headers'
bytes, see `copy_line`), so the write itself is a handful of large socket writes: the
thread that sends them hardly needs the interpreter while PostgreSQL takes them in.

The common case is a plain COPY into `otbus_events`. When the batch holds an event that
is already stored (a redelivery), the COPY fails on the key and the batch goes again
through a temporary table and `INSERT ... ON CONFLICT DO NOTHING`. Rows that PostgreSQL
refuses on their own (e.g. a NUL character in JSON) are found one by one and handed back
so the runner can dead-letter them; the rest are written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import psycopg
from psycopg import errors, sql

from otbus_core.exceptions import TransientError

__all__ = ["COLUMNS", "NULL", "EventWriter", "copy_line", "escape"]

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

NULL = b"\\N"
"""COPY text's NULL."""

_ESCAPES = {ord("\\"): b"\\\\", ord("\n"): b"\\n", ord("\r"): b"\\r", ord("\t"): b"\\t"}


def escape(value: bytes) -> bytes:
    """`value` as a field of COPY text (backslash, tab, newline and carriage return escaped)."""
    if b"\\" in value or b"\t" in value or b"\n" in value or b"\r" in value:
        return b"".join(_ESCAPES.get(c, bytes((c,))) for c in value)
    return value


def copy_line(values: Sequence[object]) -> bytes:
    """One row of COPY text from Python values, in `COLUMNS` order (None is NULL).

    The general form, for tests and tools; the handler builds its lines from the header bytes.
    """
    if len(values) != len(COLUMNS):
        raise ValueError(f"a row has {len(COLUMNS)} values, not {len(values)}")
    fields = []
    for v in values:
        if v is None:
            fields.append(NULL)
        elif isinstance(v, bytes):
            fields.append(escape(v))
        elif isinstance(v, datetime):
            fields.append(v.isoformat().encode())
        else:
            fields.append(escape(str(v).encode()))
    return b"\t".join(fields) + b"\n"


_ROW_FAULT_CLASSES = ("22", "23", "54")
"""SQLSTATE classes that can be one row's fault: data exception (e.g. NUL in JSON), integrity,
program limit (e.g. an index row too large). Everything else (connection, shutdown, a missing
table, permissions) is the database's state and is retried, never blamed on the events."""


def _transient(e: psycopg.Error) -> bool:
    state = e.sqlstate
    return state is None or state[:2] not in _ROW_FAULT_CLASSES


class EventWriter:
    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self.duplicates = 0

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    self.conninfo,
                    # a COPY on its own is one transaction: no BEGIN and COMMIT round trips
                    autocommit=True,
                    application_name="otbus-event-store",
                    connect_timeout=10,
                    client_encoding="UTF8",  # the lines are UTF-8 bytes, sent as they are
                )
            except psycopg.OperationalError as e:
                raise TransientError(f"database unreachable: {e}") from e
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, lines: Sequence[bytes]) -> list[tuple[int, str]]:
        """Store the rows (COPY text lines) durably, committed on return.

        Returns the rows PostgreSQL refused, as (index in `lines`, why); the others are stored.
        """
        if not lines:
            return []
        conn = self._connection()
        data = b"".join(lines)
        try:
            try:
                with conn.cursor() as cur, cur.copy(_COPY) as cp:
                    cp.write(data)
                return []
            except errors.UniqueViolation:
                return self._merge(conn, lines, data)
            except psycopg.Error as e:
                if _transient(e):
                    raise
                log.warning("batch of %d refused (%s); writing row by row", len(lines), e)
                return self._one_by_one(conn, lines)
        except psycopg.Error as e:
            self.close()
            raise TransientError(f"database write failed: {e}") from e

    def _merge(
        self, conn: psycopg.Connection[tuple[object, ...]], lines: Sequence[bytes], data: bytes
    ) -> list[tuple[int, str]]:
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_STAGE)
                with cur.copy(_COPY_STAGE) as cp:
                    cp.write(data)
                cur.execute(_MERGE)
                inserted = cur.rowcount
            self.duplicates += len(lines) - inserted
            log.info("redelivered batch: %d of %d events were already stored", len(lines) - inserted, len(lines))
            return []
        except psycopg.Error as e:
            if _transient(e):
                raise
            log.warning("merge of %d refused (%s); writing row by row", len(lines), e)
            return self._one_by_one(conn, lines)

    def _one_by_one(
        self, conn: psycopg.Connection[tuple[object, ...]], lines: Sequence[bytes]
    ) -> list[tuple[int, str]]:
        refused: list[tuple[int, str]] = []
        with conn.transaction(), conn.cursor() as cur:
            for i, line in enumerate(lines):
                try:
                    with conn.transaction(), cur.copy(_COPY) as cp:  # a savepoint per row
                        cp.write(line)
                except errors.UniqueViolation:
                    self.duplicates += 1
                except psycopg.Error as e:
                    if _transient(e):
                        raise
                    refused.append((i, f"PostgreSQL refused the event: {e.diag.message_primary or e}"))
        return refused
