"""Operational endpoints every service has: /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Check", "OpsServer", "install_stop_signals", "ops_router"]

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None] | None]
"""A readiness check: returns when fine, raises with a reason when not."""


async def _run_check(check: Check, limit: float) -> None:
    result = await asyncio.wait_for(asyncio.to_thread(check), limit)
    if asyncio.iscoroutine(result):
        await asyncio.wait_for(result, limit)


def ops_router(
    ready_checks: Mapping[str, Check],
    alive: Callable[[], bool] = lambda: True,
    timeout: float = 3.0,
) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = alive()
        return JSONResponse({"status": "ok" if ok else "stalled"}, status_code=200 if ok else 503)

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        results: dict[str, Any] = {}

        async def one(name: str, check: Check) -> None:
            t0 = time.perf_counter()
            try:
                await _run_check(check, timeout)
                results[name] = {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 1)}
            except Exception as e:
                results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:1000]}

        await asyncio.gather(*(one(n, c) for n, c in ready_checks.items()))
        ok = all(r["ok"] for r in results.values())
        return JSONResponse({"ready": ok, "checks": results}, status_code=200 if ok else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


class OpsServer:
    """Serves a FastAPI app from a background thread (for services whose main thread consumes)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="ops-http", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("ops HTTP server did not start (port in use?)")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=5)


def install_stop_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call `stop()` once; a second SIGINT exits at once."""

    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s: finishing the batch in hand, then stopping", signal.Signals(signum).name)
        stop()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
