"""OPC-UA server discovery on the configured host:port list only (never a network sweep)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asyncua import Client

__all__ = ["Discovery"]


class Discovery:
    def __init__(self, targets: list[str], timeout: float = 3.0) -> None:
        self.targets = targets
        self.timeout = timeout
        self.servers: list[dict[str, Any]] = []
        self.last_scan: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def scanning(self) -> bool:
        return self._task is not None and not self._task.done()

    def start_scan(self) -> bool:
        """Start a scan in the background; False when one is already running."""
        if self.scanning:
            return False
        self._task = asyncio.get_running_loop().create_task(self.scan())
        return True

    async def scan(self) -> None:
        self.servers = list(await asyncio.gather(*(self._probe(t) for t in self.targets)))
        self.last_scan = time.time()

    async def _probe(self, target: str) -> dict[str, Any]:
        host, _, port = target.rpartition(":")
        url = f"opc.tcp://{host}:{port}"
        doc: dict[str, Any] = {"protocol": "opcua", "host": host, "port": int(port), "endpoint": url}
        try:
            endpoints = await asyncio.wait_for(
                Client(url, timeout=self.timeout).connect_and_get_server_endpoints(), self.timeout
            )
        except Exception as e:
            return {**doc, "name": None, "reachable": False, "error": f"{type(e).__name__}: {e}"[:200]}
        first = endpoints[0] if endpoints else None
        return {
            **doc,
            "endpoint": first.EndpointUrl if first else url,
            "name": first.Server.ApplicationName.Text if first else None,
            "reachable": True,
            "security": sorted(
                {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name.rstrip('_')}" for e in endpoints}
            ),
        }
