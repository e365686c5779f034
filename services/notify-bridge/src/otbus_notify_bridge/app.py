"""notify-bridge: the WebSocket endpoint, the live page and the ops endpoints.

Protocol (JSON text frames; docs in the service README):
  client -> {"op": "subscribe", "channels": [...], "types": [...], "subject_prefix": "..." | [...],
             "since": "<event id>"}          (every field but op optional; one subscribe per connection)
  client -> {"op": "ping"}
  server -> {"op": "subscribed", ...} then {"op": "events", "events": [<CloudEvents JSON>...]} frames;
            {"op": "replayed", "events": n} marks the seam after a resume; {"op": "error", ...}.
Close codes: 4401 bad or expired token, 4008 slow consumer, 1008 too many errors, 1009 message too
big, 1011 store unavailable, 1013 too many clients, 1001 bridge shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs
from uuid import UUID

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.types import Receive, Scope, Send

from otbus_core.ops import ops_router
from otbus_notify_bridge.auth import Authenticator, AuthError
from otbus_notify_bridge.config import NotifyBridgeSettings
from otbus_notify_bridge.hub import Client, DirectWrite, Filter, Hub, flush_tally, tally_loop
from otbus_notify_bridge.listener import Listener
from otbus_notify_bridge.store import Credentials, FeedStore

__all__ = ["create_app"]

log = logging.getLogger(__name__)

CLOSE_AUTH = 4401
CLOSE_POLICY = 1008
CLOSE_UNAVAILABLE = 1011
CLOSE_TRY_LATER = 1013
CLOSE_GOING_AWAY = 1001
MAX_ERRORS = 20
"""Error frames a connection may earn before it is closed with 1008."""

_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]+")


class _RedactTokens(logging.Filter):
    """Browsers can only pass the token in the URL; the server's access lines must not log it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_TOKEN_IN_URL.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = _TOKEN_IN_URL.sub(r"\1<redacted>", record.msg)
        return True


Text = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class Subscribe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["subscribe"]
    channels: list[Text] = Field(default_factory=list, max_length=64)
    types: list[Text] = Field(default_factory=list)
    subject_prefix: Text | list[Text] | None = None
    since: UUID | None = None
    since_seq: int | None = Field(None, ge=0)
    """Resume after this seq (the `seq` of the last event, or of the `subscribed` frame): also
    for a client that got no event before it was cut off."""


def _error(code: str, message: str, field: str | None = None) -> dict[str, object]:
    frame: dict[str, object] = {"op": "error", "code": code, "message": message}
    if field is not None:
        frame["field"] = field
    return frame


class WebSocketFirst:
    """The ASGI app served: `/ws` goes straight to the bridge's WebSocket endpoint, everything
    else (the page, the ops endpoints, lifespan) to the FastAPI app."""

    def __init__(self, app: FastAPI, ws: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.ws = ws
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            await self.ws(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: NotifyBridgeSettings) -> WebSocketFirst:
    return WebSocketFirst(*_build(settings))


def _build(settings: NotifyBridgeSettings) -> tuple[FastAPI, Callable[[Scope, Receive, Send], Awaitable[None]]]:
    auth = Authenticator.from_settings(settings)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _RedactTokens) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_RedactTokens())
    credentials = Credentials(settings)
    store = FeedStore(settings, credentials)
    hub = Hub(
        store,
        fetch_batch=settings.fetch_batch,
        poll_interval_s=settings.poll_interval_s,
        pace_per_client_s=settings.read_pace_us_per_client / 1e6,
    )
    listener = Listener(settings, credentials, hub.on_notify, hub.wake_all)
    static = resources.files("otbus_notify_bridge") / "static"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.open()
        task = asyncio.create_task(listener.run(), name="listener")
        tally = asyncio.create_task(tally_loop(), name="tally")
        try:
            yield
        finally:
            tally.cancel()
            flush_tally()
            hub.close_all(CLOSE_GOING_AWAY, "bridge shutting down; resume with since")
            await asyncio.sleep(0.1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()

    app = FastAPI(
        title="otbus notify bridge",
        summary="PostgreSQL (Lakebase) LISTEN/NOTIFY to WebSocket clients, gap-free, with a live page",
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.state.listener = listener
    app.state.auth = auth

    async def feeds_check() -> None:  # on the event loop: the hub is not thread-safe
        failing = hub.failures()
        if failing:
            raise RuntimeError("; ".join(f"{t}: {why}" for t, why in failing.items()))

    app.include_router(ops_router({"listener": listener.check, "database": store.ping, "feeds": feeds_check}))

    @app.get("/diagnostics", tags=["ops"], summary="Listener, feeds and clients")
    async def diagnostics() -> dict[str, Any]:
        return {
            "listener": {
                "connected": listener.connected,
                "connections": listener.connections,
                "backend_pid": listener.backend_pid,
                "last_error": listener.last_error,
                "channels": settings.channels,
            },
            "clients": len(hub.clients),
            "feeds": {
                t: {"cursor": f.cursor, "clients": len(f.clients), "failure": f.failure} for t, f in hub.feeds.items()
            },
        }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    async def ws(scope: Scope, receive: Receive, send: Send) -> None:
        """The WebSocket endpoint, in plain ASGI: a frame to a client is one call into the server
        (no per-message framework layers; this is the bridge's hot path)."""
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = (params.get("token") or [None])[0]
        if not token:
            for name, value in scope.get("headers", ()):
                if name == b"authorization" and value[:7].lower() == b"bearer ":
                    token = value[7:].decode("latin-1").strip()
        try:
            identity = auth.identify(token)
        except AuthError as e:
            await send({"type": "websocket.close", "code": CLOSE_AUTH, "reason": str(e)[:120]})
            return
        if len(hub.clients) >= settings.max_clients:
            await send(
                {"type": "websocket.close", "code": CLOSE_TRY_LATER, "reason": "too many clients; try again later"}
            )
            return

        async def send_text(frame: str) -> None:
            await send({"type": "websocket.send", "text": frame})

        async def close(code: int, reason: str) -> None:
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": code, "reason": reason})

        client = Client(
            identity.tenant,
            send_text,
            close,
            max_events=settings.client_queue_events,
            max_bytes=settings.client_queue_bytes,
            frame_max_events=settings.frame_max_events,
            direct=direct_writer(send) if settings.direct_writes else None,
        )
        hub.connect(client)

        async def read_loop() -> None:
            errors = 0
            try:
                while not client.closed:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    reply = await _handle(message.get("text"), client, settings, hub, store, tasks)
                    if reply is not None:
                        errors += 1
                        client.control(reply)
                        if errors >= MAX_ERRORS:
                            client.close_soon(CLOSE_POLICY, "too many invalid messages")
            finally:
                if not client.closed:
                    client.closed = True
                    client.finished.set()

        tasks: list[asyncio.Task[None]] = []
        tasks.append(asyncio.create_task(_guard(client, client.write_loop())))
        tasks.append(asyncio.create_task(_guard(client, read_loop())))
        if identity.expires_at is not None:
            tasks.append(asyncio.create_task(_expire(client, identity.expires_at)))
        try:
            await client.finished.wait()
        finally:
            client.closed = True
            hub.disconnect(client)
            for t in tasks:
                t.cancel()

    return app, ws


async def _handle(
    text: str | None,
    client: Client,
    settings: NotifyBridgeSettings,
    hub: Hub,
    store: FeedStore,
    tasks: list[asyncio.Task[None]],
) -> dict[str, object] | None:
    """Acts on one client message; returns an error frame for a bad one."""
    if text is None:
        return _error("malformed", "send JSON text frames, not binary ones")
    try:
        msg = json.loads(text)
    except ValueError as e:
        return _error("malformed", f"not JSON: {e}")
    except RecursionError:
        return _error("malformed", "JSON nested too deeply")
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        return _error("malformed", 'a message is a JSON object with an "op"', "op")
    op = msg["op"]
    if op == "ping":
        client.control({"op": "pong", "time": time.time()})
        return None
    if op != "subscribe":
        return _error("unknown_op", f"unknown op {op!r} (expected subscribe or ping)", "op")
    if client.subscribed:
        return _error("already_subscribed", "one subscription per connection; open another connection", "op")
    try:
        sub = Subscribe.model_validate(msg)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            return _error("unknown_filter", f"unknown field {field!r}", field)
        return _error("invalid_subscribe", err["msg"], field)
    unknown = [c for c in sub.channels if c not in settings.channels]
    if unknown:
        return _error(
            "unknown_channel",
            f"not a channel this bridge listens on: {unknown[0]} (it listens on {', '.join(settings.channels)})",
            "channels",
        )
    if len(sub.types) > settings.max_types:
        return _error("invalid_subscribe", f"at most {settings.max_types} types", "types")
    prefixes = [sub.subject_prefix] if isinstance(sub.subject_prefix, str) else list(sub.subject_prefix or [])
    if len(prefixes) > settings.max_subject_prefixes:
        return _error("invalid_subscribe", f"at most {settings.max_subject_prefixes} prefixes", "subject_prefix")
    flt = Filter(frozenset(sub.channels), frozenset(sub.types), tuple(prefixes))
    if sub.since is not None and sub.since_seq is not None:
        return _error("invalid_subscribe", "give since or since_seq, not both", "since_seq")
    since_seq: int | None = None
    try:
        if sub.since_seq is not None:
            head = await store.head(client.tenant)
            if sub.since_seq > head:
                return _error("unknown_since", f"since_seq {sub.since_seq} is ahead of this feed ({head})", "since_seq")
            since_seq = sub.since_seq
        elif sub.since is not None:
            since_seq = await store.seq_of(client.tenant, sub.since)
            if since_seq is None:
                return _error(
                    "unknown_since",
                    f"no event {sub.since} in this tenant's feed (never stored, or past retention)",
                    "since",
                )
        start = await hub.subscribe(client, flt, since_seq, wait_s=10)
    except Exception as e:
        log.warning("subscribe failed: %s", e)
        client.close_soon(CLOSE_UNAVAILABLE, "event store unavailable; try again")
        return None
    since = str(sub.since) if sub.since is not None else None
    client.control(
        {"op": "subscribed", "tenant": client.tenant, **flt.describe(), "since": since, "since_seq": sub.since_seq}
        | {"seq": start}
    )
    if since_seq is not None:
        tasks.append(asyncio.create_task(_guard(client, _replay(client, hub))))
    return None


async def _replay(client: Client, hub: Hub) -> None:
    sent = await hub.replay(client)
    client.control({"op": "replayed", "events": sent})


def direct_writer(send: Send) -> DirectWrite | None:
    """Writes frames straight to the connection's transport, when the server is uvicorn's
    websockets-sansio implementation with no extension negotiated (None otherwise: frames then
    go through ASGI sends).

    Per client and event frame this saves the ASGI round, the task switch and the framing of
    the same bytes again (about half the cost of a send here, the rest being the socket write),
    so the last of 100 clients gets a read's frame much sooner. It reads uvicorn's protocol
    object (the bound `send`): if that changes shape, this returns None and nothing else changes.
    """
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
        from websockets.protocol import State
    except ImportError:
        return None
    proto = getattr(send, "__self__", None)
    if not isinstance(proto, WebSocketsSansIOProtocol):
        return None
    try:
        conn, transport, writable = proto.conn, proto.transport, proto.writable
        if conn.extensions or conn.state is not State.OPEN or not proto.handshake_complete:
            return None
    except AttributeError:
        return None

    def write(frame: Callable[[], bytes]) -> bool:
        if proto.close_sent or not writable.is_set() or conn.state is not State.OPEN or transport.is_closing():
            return False
        try:
            transport.write(frame())
        except Exception as e:  # one broken connection must not stop a read's other clients
            log.info("a direct write failed (%s); the frame goes through the client's queue", e)
            return False
        return True

    return write


async def _guard(client: Client, work: Any) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as e:
        if not client.closed:
            log.warning("a client's connection failed: %s", e)
            client.close_soon(CLOSE_UNAVAILABLE, "internal error; resume with since")


async def _expire(client: Client, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))
    client.close_soon(CLOSE_AUTH, "token expired")
