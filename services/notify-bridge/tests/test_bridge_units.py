"""Unit tests of the bridge's pure parts: filters, tokens, settings, client queues, log redaction."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jwt
import pytest

from otbus_core.exceptions import ConfigError
from otbus_core.settings import load_settings
from otbus_notify_bridge.app import _RedactTokens, direct_writer
from otbus_notify_bridge.auth import Authenticator, AuthError
from otbus_notify_bridge.config import NotifyBridgeSettings
from otbus_notify_bridge.hub import CLOSE_SLOW, Batch, Client, Filter, text_frame
from otbus_notify_bridge.store import FeedEvent

SECRET = "s" * 40


def ev(
    seq: int, channel: str = "otbus_events", type_: str = "otbus.ot.tag.v1", subject: str | None = "p/a/b"
) -> FeedEvent:
    return FeedEvent(seq, f"id-{seq}", channel, type_, subject, time.time(), json.dumps({"seq": seq}))


def test_filter_matches_channel_type_and_any_prefix() -> None:
    assert Filter().matches(ev(1))
    f = Filter(frozenset({"otbus_events"}), frozenset({"otbus.alarm.v1"}), ("plant1/press/", "plant1/oven/"))
    assert f.matches(ev(1, type_="otbus.alarm.v1", subject="plant1/oven/o1"))
    assert not f.matches(ev(1, type_="otbus.alarm.v1", subject="plant1/saw/s1"))
    assert not f.matches(ev(1, type_="otbus.ot.tag.v1", subject="plant1/oven/o1"))
    assert not f.matches(ev(1, channel="recommendation_inserted", type_="otbus.alarm.v1", subject="plant1/oven/o"))
    assert not f.matches(ev(1, type_="otbus.alarm.v1", subject=None))


def test_tokens_static_and_signed() -> None:
    auth = Authenticator(None, SECRET)
    good = jwt.encode({"tenant": "acme", "exp": int(time.time()) + 60}, SECRET)
    ident = auth.identify(good)
    assert ident.tenant == "acme" and ident.expires_at is not None
    for token, why in [
        (None, "missing token"),
        ("", "missing token"),
        ("not-a-jwt", "invalid token"),
        (jwt.encode({"tenant": "acme", "exp": int(time.time()) - 60}, SECRET), "token expired"),
        (jwt.encode({"tenant": "acme"}, SECRET), "invalid token"),  # no exp
        (jwt.encode({"tenant": "ACME!", "exp": int(time.time()) + 60}, SECRET), "not a tenant id"),
        (jwt.encode({"tenant": "acme", "exp": int(time.time()) + 60}, "t" * 40), "invalid token"),
    ]:
        with pytest.raises(AuthError, match=why):
            auth.identify(token)
    with pytest.raises(ConfigError, match="OTBUS_JWT_SECRET"):
        Authenticator(None, "short")
    with pytest.raises(ConfigError, match="OTBUS_API_TOKENS"):
        Authenticator(None, None)


def test_settings_name_the_key_at_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTBUS_CHANNELS", '["otbus_events", "Bad-Channel"]')
    with pytest.raises(ConfigError, match="OTBUS_CHANNELS"):
        load_settings(NotifyBridgeSettings)
    monkeypatch.delenv("OTBUS_CHANNELS")
    monkeypatch.setenv("OTBUS_FETCH_BATCH", "1000")
    monkeypatch.setenv("OTBUS_CLIENT_QUEUE_EVENTS", "1500")
    with pytest.raises(ConfigError, match="client_queue_events must be at least twice fetch_batch"):
        load_settings(NotifyBridgeSettings)


def test_client_queue_coalesces_frames_and_closes_when_full() -> None:
    async def scenario() -> tuple[list[str], list[tuple[int, str]]]:
        sent: list[str] = []
        closed: list[tuple[int, str]] = []
        gate = asyncio.Event()

        async def send(frame: str) -> None:
            await gate.wait()
            sent.append(frame)

        async def close(code: int, reason: str) -> None:
            closed.append((code, reason))

        c = Client("acme", send, close, max_events=10, max_bytes=10_000, frame_max_events=4)
        writer = asyncio.create_task(c.write_loop())
        c.control({"op": "subscribed"})
        c.push(Batch([ev(1), ev(2), ev(3)], 30))
        c.push(Batch([ev(4), ev(5)], 20))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.sleep(0.01)
        c.push(Batch([ev(i) for i in range(6, 18)], 120))  # 12 > max_events, but one read fits an empty queue
        assert not c.closed
        await asyncio.sleep(0.01)
        gate.clear()  # the client stops reading
        c.push(Batch([ev(18)], 10))  # taken by the writer, which now waits for the client
        await asyncio.sleep(0.01)
        c.push(Batch([ev(i) for i in range(19, 25)], 60))  # queued
        assert not c.closed
        c.push(Batch([ev(i) for i in range(25, 31)], 60))  # 12 waiting > 10: closed as slow
        await asyncio.wait_for(c.finished.wait(), 1)
        writer.cancel()
        return sent, closed

    sent, closed = asyncio.run(scenario())
    assert json.loads(sent[0]) == {"op": "subscribed"}
    batches = [[e["seq"] for e in json.loads(f)["events"]] for f in sent[1:]]
    assert batches[:2] == [[1, 2, 3, 4], [5]]  # what queued while waiting, at most 4 per frame
    assert closed and closed[0][0] == CLOSE_SLOW and "resume with since" in closed[0][1]


def test_text_frame_is_what_websockets_writes() -> None:
    from websockets.frames import Frame, Opcode

    for n in (0, 1, 125, 126, 127, 65535, 65536, 1_000_000):
        payload = ("é" * n).encode()[:n]
        assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[]), n


def test_idle_client_gets_frames_written_directly_and_busy_ones_queue() -> None:
    async def scenario() -> tuple[list[bytes], list[str]]:
        wire: list[bytes] = []
        sent: list[str] = []
        open_ = [True]
        gate = asyncio.Event()

        def direct(frame: Callable[[], bytes]) -> bool:
            if open_[0]:
                wire.append(frame())
            return open_[0]

        async def send(frame: str) -> None:
            await gate.wait()
            sent.append(frame)

        async def close(code: int, reason: str) -> None:
            pass

        c = Client("acme", send, close, max_events=100, max_bytes=100_000, frame_max_events=4, direct=direct)
        writer = asyncio.create_task(c.write_loop())
        c.push(Batch.of([ev(1), ev(2)]))  # idle: written at once, no task switch
        assert len(wire) == 1 and c.delivered == 2
        c.push(Batch.of([ev(i) for i in range(3, 9)]))  # more than a frame holds: through the queue
        c.push(Batch.of([ev(9)]))  # something is queued: behind it, in order
        open_[0] = False
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.sleep(0.01)
        c.push(Batch.of([ev(10)]))  # the transport is paused: queued
        await asyncio.sleep(0.01)
        open_[0] = True
        c.push(Batch.of([ev(11)]))  # idle again
        # the writer is inside a send and the queue is empty: a new frame must wait behind it
        gate.clear()
        open_[0] = False
        c.push(Batch.of([ev(12)]))  # paused: queued, and taken by the writer, which now waits
        await asyncio.sleep(0.01)
        open_[0] = True
        c.push(Batch.of([ev(13)]))  # the transport takes frames again, but ev 12 is on its way
        assert len(wire) == 2
        gate.set()
        await asyncio.sleep(0.01)
        writer.cancel()
        return wire, sent

    wire, sent = asyncio.run(scenario())
    direct_seqs = [[e["seq"] for e in json.loads(w[2:])["events"]] for w in wire]  # short frames: 2-byte head
    queued_seqs = [[e["seq"] for e in json.loads(f)["events"]] for f in sent]
    assert direct_seqs == [[1, 2], [11]]
    assert queued_seqs == [[3, 4, 5, 6], [7, 8, 9], [10], [12], [13]]
    assert wire[0] == text_frame(Batch.of([ev(1), ev(2)]).text().encode()) and wire[0][1] < 126


class _Transport:
    def __init__(self, fail: bool = False) -> None:
        self.data: list[bytes] = []
        self.closing = False
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("broken")
        self.data.append(data)

    def is_closing(self) -> bool:
        return self.closing


def _sansio_send(transport: _Transport, extensions: list[object] | None = None) -> Any:
    """A bound `send` of a uvicorn websockets-sansio protocol object in an open connection."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.protocol import State

    proto = object.__new__(WebSocketsSansIOProtocol)
    proto.conn = SimpleNamespace(extensions=extensions or [], state=State.OPEN)  # type: ignore[assignment]
    proto.transport = transport  # type: ignore[assignment]
    proto.writable = asyncio.Event()
    proto.writable.set()
    proto.close_sent = False
    proto.handshake_complete = True
    return proto.send


def test_direct_writer_writes_only_to_an_open_writable_connection() -> None:
    from websockets.protocol import State

    async def plain_send(message: Any) -> None:
        pass

    assert direct_writer(plain_send) is None  # not uvicorn's sansio protocol: ASGI sends only
    assert direct_writer(_sansio_send(_Transport(), extensions=[object()])) is None  # e.g. deflate

    t = _Transport()
    send = _sansio_send(t)
    write = direct_writer(send)
    assert write is not None
    made: list[int] = []

    def frame() -> bytes:
        made.append(1)
        return b"frame"

    assert write(frame) and t.data == [b"frame"]
    proto = send.__self__
    proto.writable.clear()  # paused (the peer does not read): refused, and the frame never made
    assert not write(frame) and len(made) == 1
    proto.writable.set()
    proto.conn.state = State.CLOSING  # a close frame came in
    assert not write(frame)
    proto.conn.state = State.OPEN
    proto.close_sent = True
    assert not write(frame)
    proto.close_sent = False
    t.closing = True  # the connection was lost
    assert not write(frame)
    assert t.data == [b"frame"]
    broken = direct_writer(_sansio_send(_Transport(fail=True)))
    assert broken is not None and not broken(frame)  # a failing write is refused, not raised


def test_tokens_in_urls_are_redacted_from_access_lines() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("1.2.3.4", "/ws?token=sekret&x=1"),
        None,
    )
    assert _RedactTokens().filter(record)
    assert "sekret" not in record.getMessage() and "token=<redacted>&x=1" in record.getMessage()
