"""The LISTEN connection: reconnects by itself, and tells the hub when it (re)connected.

On every (re)connect the hub reads each followed tenant's feed from its cursor, so what was
committed while the listener was away reaches the clients, in order, before new events.
Connections are replaced before `max_connection_age_s` (Lakebase ends them after three days),
and the password is fetched anew for each one (Lakebase OAuth tokens expire hourly).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from psycopg import AsyncConnection, sql

from otbus_notify_bridge import metrics
from otbus_notify_bridge.config import NotifyBridgeSettings
from otbus_notify_bridge.store import Credentials

__all__ = ["Listener"]

log = logging.getLogger(__name__)


class Listener:
    def __init__(
        self,
        settings: NotifyBridgeSettings,
        credentials: Credentials,
        on_notify: Callable[[str], None],
        on_connected: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.on_notify = on_notify
        self.on_connected = on_connected
        self.connected = False
        self.connections = 0
        self.backend_pid: int | None = None
        self.last_error: str | None = None

    async def run(self) -> None:
        s = self.settings
        delay = s.reconnect_initial_s
        while True:
            conn: AsyncConnection[tuple[Any, ...]] | None = None
            try:
                conn = await self.credentials.connect(autocommit=True)
                for channel in s.channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                born = time.monotonic()
                self.backend_pid = conn.info.backend_pid
                if self.connections:
                    metrics.LISTENER_RECONNECTS.inc()
                    log.info("listener reconnected (pid %s); reading what was missed", self.backend_pid)
                else:
                    log.info("listening on %s", ", ".join(s.channels))
                self.connections += 1
                self.connected = True
                self.last_error = None
                metrics.LISTENER_CONNECTED.set(1)
                self.on_connected()
                delay = s.reconnect_initial_s
                while time.monotonic() - born < s.max_connection_age_s:
                    async for note in conn.notifies(timeout=s.listener_check_s):
                        self.on_notify(note.payload)
                    await conn.execute("SELECT 1")  # an idle connection's peer may be gone
                log.info("listener connection reached max_connection_age_s; replacing it")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a database error, or a credentials provider that failed
                self.last_error = f"{type(e).__name__}: {e}".strip()
                if self.connected:
                    log.warning("listener connection lost (%s); reconnecting", self.last_error)
                else:
                    log.warning("listener cannot connect (%s); again in %.1fs", self.last_error, delay)
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311
                    delay = min(delay * 2, s.reconnect_max_s)
            finally:
                self.connected = False
                metrics.LISTENER_CONNECTED.set(0)
                if conn is not None:
                    await conn.close()

    def check(self) -> None:
        if not self.connected:
            raise RuntimeError(f"listener not connected: {self.last_error or 'connecting'}")
