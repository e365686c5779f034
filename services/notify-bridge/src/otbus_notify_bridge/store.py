"""Reads the feed from PostgreSQL: stored events and relayed rows, in `seq` (commit) order.

`seq` grows in commit order (schemas/sql/002_live_feed.sql), so "every event of tenant T with
seq > N" read now is complete: nothing committed later can have a smaller seq. The bridge keeps
one such cursor per followed tenant and one per client, which is what makes live delivery,
resume and the listener's own reconnects gap-free.

Each event leaves PostgreSQL already as the JSON text the clients get (a CloudEvents JSON
event with `seq` and `channel`), so a large payload is never parsed in Python.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from otbus_core.exceptions import ConfigError
from otbus_notify_bridge.config import STORE_CHANNEL, NotifyBridgeSettings

__all__ = ["Credentials", "FeedEvent", "FeedStore"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FeedEvent:
    seq: int
    id: str
    channel: str
    type: str
    subject: str | None
    time: float
    """Event (source) time, Unix seconds."""
    json: str
    """The event as sent to clients."""
    notified: float | None = None
    """When the bridge heard of it (monotonic), if it did (NOTIFY -> WebSocket latency)."""


def _event_json(table_channel: str) -> str:
    return (
        "json_build_object('specversion', '1.0', 'id', event_id, 'seq', seq, 'channel', "
        + table_channel
        + ", 'type', type, 'source', source, 'subject', subject, 'time', time, 'data', payload)::text"
    )


_COLUMNS = "seq, event_id::text, {channel}, type, subject, extract(epoch FROM time)::float8, {json}"
_FETCH = (
    "(SELECT "  # noqa: S608 - constants only
    + _COLUMNS.format(channel=f"'{STORE_CHANNEL}'", json=_event_json(f"'{STORE_CHANNEL}'"))
    + " FROM otbus_events WHERE tenant = %(t)s AND seq > %(after)s AND seq <= %(upto)s ORDER BY seq LIMIT %(n)s)"
    " UNION ALL (SELECT "
    + _COLUMNS.format(channel="channel", json=_event_json("channel"))
    + " FROM otbus_relay_events WHERE tenant = %(t)s AND seq > %(after)s AND seq <= %(upto)s"
    " AND channel = ANY(%(channels)s) ORDER BY seq LIMIT %(n)s)"
    " ORDER BY 1 LIMIT %(n)s"
)
_HEAD = (
    "SELECT greatest((SELECT max(seq) FROM otbus_events WHERE tenant = %(t)s),"
    " (SELECT max(seq) FROM otbus_relay_events WHERE tenant = %(t)s), 0)"
)
_SEQ_OF = (
    "SELECT seq FROM otbus_events WHERE tenant = %(t)s AND event_id = %(id)s AND seq IS NOT NULL"
    " UNION ALL SELECT seq FROM otbus_relay_events WHERE tenant = %(t)s AND event_id = %(id)s"
    " ORDER BY 1 LIMIT 1"  # an id stored twice (other times): the earlier, so nothing is skipped
)
_MAX_SEQ = 2**63 - 1


class Credentials:
    """Connection arguments, the password fetched anew before every connection."""

    def __init__(self, settings: NotifyBridgeSettings) -> None:
        self.conninfo = settings.database_url
        self.password_file: Path | None = settings.database_password_file
        self.provider: Callable[[], Any] | None = None
        if settings.database_credentials_provider:
            self.provider = _load_callable(settings.database_credentials_provider)

    async def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "application_name": "otbus-notify-bridge",
            "connect_timeout": 10,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        if self.password_file is not None:
            kw["password"] = self.password_file.read_text().strip()
        elif self.provider is not None:
            if inspect.iscoroutinefunction(self.provider):
                value = await self.provider()
            else:  # e.g. an OAuth call: not on the event loop
                value = await asyncio.to_thread(self.provider)
                if inspect.isawaitable(value):
                    value = await value
            kw["password"] = str(value)
        return kw

    async def connect(self, **extra: Any) -> AsyncConnection[tuple[Any, ...]]:
        return await AsyncConnection.connect(self.conninfo, **(await self.kwargs()), **extra)


def _load_callable(spec: str) -> Callable[[], Any]:
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"OTBUS_DATABASE_CREDENTIALS_PROVIDER: cannot load {spec!r}: {e}") from None
    if not callable(fn):
        raise ConfigError(f"OTBUS_DATABASE_CREDENTIALS_PROVIDER: {spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


class FeedStore:
    def __init__(self, settings: NotifyBridgeSettings, credentials: Credentials) -> None:
        self.channels = [c for c in settings.channels if c != STORE_CHANNEL]
        self.pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            credentials.conninfo,
            kwargs=credentials.kwargs,
            min_size=1,
            max_size=settings.database_pool_size,
            max_lifetime=settings.max_connection_age_s,
            open=False,
            name="feed",
            configure=_configure,
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def fetch(self, tenant: str, after: int, limit: int, upto: int | None = None) -> list[FeedEvent]:
        """Events of `tenant` with `after < seq <= upto`, in seq order, at most `limit`."""
        params = {"t": tenant, "after": after, "upto": _MAX_SEQ if upto is None else upto, "n": limit}
        params["channels"] = self.channels
        async with self.pool.connection() as conn:
            cur = await conn.execute(_FETCH, params, prepare=True)  # planning costs more than running it
            return [FeedEvent(*row) for row in await cur.fetchall()]

    async def head(self, tenant: str) -> int:
        """The largest seq of `tenant` committed now (0 if none)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_HEAD, {"t": tenant})).fetchone()
        return int(row[0]) if row else 0

    async def seq_of(self, tenant: str, event_id: UUID) -> int | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_SEQ_OF, {"t": tenant, "id": event_id})).fetchone()
        return int(row[0]) if row else None

    async def ping(self) -> None:
        async with self.pool.connection(timeout=3) as conn:
            await conn.execute("SELECT 1")


async def _configure(conn: AsyncConnection[tuple[Any, ...]]) -> None:
    await conn.set_autocommit(True)
