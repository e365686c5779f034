"""Delta tables of the emulator: one writer thread per table, commits on a short interval.

A record is acknowledged only once the Delta commit holding it has succeeded, so an
acknowledgment means what Zerobus's durability acknowledgment means: the row is in the table.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from otbus_zerobus_sink.rowschema import Column, arrow_type, sql_type

__all__ = ["TableWriter", "WriteResult", "create_table", "existing_columns", "table_path"]

log = logging.getLogger(__name__)


def table_path(data_dir: Path, table: str) -> Path:
    """`catalog.schema.table` -> data_dir/catalog/schema/table."""
    catalog, schema, name = table.split(".")
    return data_dir / catalog / schema / name


@dataclass(slots=True)
class WriteResult:
    """Delivered to each stream with rows in a commit: the highest offset now durable, or the error."""

    offset: int
    error: str | None = None


@dataclass(slots=True)
class _Pending:
    rows: list[Any]
    offset: int
    done: Callable[[WriteResult], None]


@dataclass
class TableStats:
    rows: int = 0
    commits: int = 0
    failed_commits: int = 0
    last_commit_ms: float = 0.0


class TableWriter:
    """Appends decoded rows to one Delta table; `submit` returns at once, `done` is called after the commit."""

    def __init__(self, name: str, path: Path, columns: list[Column], commit_interval: float, max_rows: int) -> None:
        self.name = name
        self.path = path
        self.columns = columns
        self.commit_interval = commit_interval
        self.max_rows = max_rows
        self.schema = pa.schema([pa.field(c.name, c.arrow_type, nullable=True) for c in columns])
        self.stats = TableStats()
        self._q: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._table: DeltaTable | None = DeltaTable(str(path)) if DeltaTable.is_deltatable(str(path)) else None
        self._thread = threading.Thread(target=self._run, name=f"delta-{name}", daemon=True)
        self._thread.start()

    def submit(self, rows: list[Any], offset: int, done: Callable[[WriteResult], None]) -> None:
        self._q.put(_Pending(rows, offset, done))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._q.get()
            if item is None:
                return
            batch = [item]
            n = len(item.rows)
            deadline = time.monotonic() + self.commit_interval
            while n < self.max_rows:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    nxt = self._q.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
                n += len(nxt.rows)
            self._commit(batch, n)

    def _commit(self, batch: list[_Pending], n: int) -> None:
        t0 = time.perf_counter()
        error: str | None = None
        try:
            data = self._arrow([r for p in batch for r in p.rows])
            if self._table is None:
                self.path.mkdir(parents=True, exist_ok=True)
                write_deltalake(str(self.path), data, mode="append")
                self._table = DeltaTable(str(self.path))
            else:
                write_deltalake(self._table, data, mode="append")
                self._table.update_incremental()
            self.stats.rows += n
            self.stats.commits += 1
        except Exception as e:
            log.exception("delta commit to %s failed", self.name)
            self.stats.failed_commits += 1
            error = f"{type(e).__name__}: {e}"
            self._table = DeltaTable(str(self.path)) if DeltaTable.is_deltatable(str(self.path)) else None
        self.stats.last_commit_ms = round((time.perf_counter() - t0) * 1000, 2)
        # one result per stream: the highest offset of that stream in this commit
        last: dict[Callable[[WriteResult], None], int] = {}
        for p in batch:
            last[p.done] = max(p.offset, last.get(p.done, -1))
        for done, offset in last.items():
            done(WriteResult(offset, error))

    def _arrow(self, rows: list[Any]) -> pa.Table:
        cols = []
        for c in self.columns:
            name = c.name
            cols.append(pa.array([getattr(r, name) if r.HasField(name) else None for r in rows], type=c.arrow_type))
        return pa.Table.from_arrays(cols, schema=self.schema)


def create_table(path: Path, cols: list[tuple[str, str]]) -> None:
    """An empty Delta table with these (name, SQL type) columns; raises ValueError on an unknown type."""
    fields = []
    for name, type_name in cols:
        try:
            fields.append(pa.field(name, arrow_type(type_name), nullable=True))
        except ValueError as e:
            raise ValueError(f"column {name}: {e}") from None
    path.mkdir(parents=True, exist_ok=True)
    DeltaTable.create(str(path), pa.schema(fields), mode="error")


def existing_columns(path: Path) -> list[tuple[str, str]] | None:
    """(name, Delta type) of the table at `path`, or None when there is none."""
    if not DeltaTable.is_deltatable(str(path)):
        return None
    return [(f.name, _delta_type(f.type)) for f in DeltaTable(str(path)).schema().fields]


def _delta_type(t: Any) -> str:
    """A deltalake schema type as the SQL name the DDL uses."""
    return sql_type(str(getattr(t, "type", t)))
