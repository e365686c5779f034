"""The ingest paths are answered ahead of FastAPI: which requests go where."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from otbus_ingest_http.app import _IngestEndpoints


def _route(method: str, path: str, root_path: str = "") -> tuple[str, bool | None]:
    seen: list[tuple[str, bool | None]] = []

    async def fastapi(scope: Any, receive: Any, send: Any) -> None:
        seen.append(("fastapi", None))

    async def serve(scope: Any, receive: Any, send: Any, batch: bool) -> None:
        seen.append(("ingest", batch))

    scope = {"type": "http", "method": method, "path": root_path + path, "root_path": root_path}
    asyncio.run(_IngestEndpoints(fastapi, serve)(scope, None, None))
    return seen[0]


@pytest.mark.parametrize("root", ["", "/otbus"])
def test_posts_to_the_ingest_paths_are_served_ahead(root: str) -> None:
    assert _route("POST", "/system/zerobus/ingest/batch", root) == ("ingest", True)
    assert _route("POST", "/api/v1/ingest/batch", root) == ("ingest", True)
    assert _route("POST", "/system/zerobus/ingest", root) == ("ingest", False)
    assert _route("POST", "/api/v1/ingest", root) == ("ingest", False)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/system/zerobus/ingest/batch"),  # FastAPI answers 405
        ("POST", "/system/zerobus/ingest/batch/"),  # FastAPI redirects
        ("POST", "/system/zerobus/diagnostics"),
        ("GET", "/readyz"),
    ],
)
def test_everything_else_goes_to_fastapi(method: str, path: str) -> None:
    assert _route(method, path) == ("fastapi", None)
