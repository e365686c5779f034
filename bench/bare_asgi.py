"""Baseline for ingest-http: the fastest minimal Python endpoint.

A raw ASGI app (no framework) served by uvicorn with uvloop and httptools: it reads the
body, decodes it with msgspec into a list of structs, produces nothing and answers a
small JSON. Run: `python -m uvicorn bench.bare_asgi:app --loop uvloop --http httptools`.
"""

from __future__ import annotations

from typing import Any

import msgspec


class TagEvent(msgspec.Struct, frozen=True, gc=False):
    tagPath: str
    tagProvider: str | None = None
    value: bool | int | float | str | None = None
    quality: str | None = None
    qualityCode: int | None = None
    timestamp: int | float | None = None
    dataType: str | None = None


_decode = msgspec.json.Decoder(list[TagEvent]).decode
_encode = msgspec.json.Encoder().encode
_JSON = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    status = 200
    if scope["method"] == "POST":
        try:
            events = _decode(b"".join(chunks))
            out = _encode({"accepted": len(events), "dropped": 0, "errors": []})
        except msgspec.DecodeError as e:
            status, out = 400, _encode({"detail": str(e)})
    else:
        out = b'{"status":"ok"}'
    headers = [*_JSON, (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": out})
