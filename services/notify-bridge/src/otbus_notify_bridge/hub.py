"""Clients, their filters and queues, and one feed per followed tenant.

A tenant's feed holds a cursor: the largest seq it has handed to its live clients. A
notification (or the listener reconnecting, or a periodic safety read) wakes the feed, which
reads every event after its cursor from the store and hands each live client the ones its
filter matches. Every client has its own cursor too, so an event is never handed twice, and
a resuming client catches up from the store (paced by its own queue) until its cursor meets
the feed's, then turns live with no await in between: no gap and no duplicate at the seam.

Clients whose filters are equal share the matching and the byte counting of each read, so a
thousand dashboards with the same subscription cost little more than one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from otbus_notify_bridge import metrics
from otbus_notify_bridge.store import FeedEvent, FeedStore

__all__ = ["CLOSE_SLOW", "Client", "Filter", "Hub", "TenantFeed"]

log = logging.getLogger(__name__)

CLOSE_SLOW = 4008
"""Close code for a client whose queue overflowed; it may resume with `since`."""
CLOSE_GRACE_S = 10.0
MAX_PACE_S = 0.2


@dataclass(frozen=True, slots=True)
class Filter:
    channels: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    subject_prefixes: tuple[str, ...] = ()

    def matches(self, e: FeedEvent) -> bool:
        if self.channels and e.channel not in self.channels:
            return False
        if self.types and e.type not in self.types:
            return False
        if self.subject_prefixes:
            return e.subject is not None and e.subject.startswith(self.subject_prefixes)
        return True

    def describe(self) -> dict[str, list[str]]:
        return {
            "channels": sorted(self.channels),
            "types": sorted(self.types),
            "subject_prefixes": list(self.subject_prefixes),
        }


@dataclass(slots=True)
class Batch:
    """Events queued for clients, with their byte count and, once built, their frame: clients
    with equal filters share one Batch, so a read's frame is built once, not once per client."""

    events: list[FeedEvent]
    nbytes: int
    frame: str | None = None
    wire: bytes | None = None

    @classmethod
    def of(cls, events: list[FeedEvent]) -> Batch:
        return cls(events, sum(len(e.json) for e in events))

    def text(self) -> str:
        if self.frame is None:
            self.frame = '{"op":"events","events":[' + ",".join(e.json for e in self.events) + "]}"
        return self.frame

    def ws_frame(self) -> bytes:
        """The frame as a WebSocket text frame on the wire (server frames are not masked, so
        every client gets the same bytes)."""
        if self.wire is None:
            self.wire = text_frame(self.text().encode())
        return self.wire


def text_frame(payload: bytes) -> bytes:
    """An unfragmented, unmasked WebSocket text frame (RFC 6455 section 5.2), no extensions."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


DirectWrite = Callable[[Callable[[], bytes]], bool]
"""Writes a frame's bytes (made by the callable, only when they can be written) to the connection
now and returns True, or returns False when it cannot (the transport is paused or closing): then
the frame goes through the queue."""


Chunk = Batch | str
"""Queued for a client: events, or a ready control frame."""


class Client:
    def __init__(
        self,
        tenant: str,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        *,
        max_events: int,
        max_bytes: int,
        frame_max_events: int,
        direct: DirectWrite | None = None,
    ) -> None:
        self.tenant = tenant
        self._send = send
        self._direct = direct
        self._sending = False  # the writer is inside a send: the queue's head is on its way
        self._close = close
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.frame_max_events = frame_max_events
        self.filter = Filter()
        self.subscribed = False
        self.cursor = 0
        self.replaying = False
        self.closed = False
        self.last_id: str | None = None
        self.delivered = 0
        self._queue: deque[Chunk] = deque()
        self._q_events = 0
        self._q_bytes = 0
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self.finished = asyncio.Event()
        """Set when the connection is over (closed by either side, or dropped)."""

    # -- queue ------------------------------------------------------------------------------
    def push(self, batch: Batch) -> None:
        # The hot path: nothing queued or on its way, so the frame is written now, with no task
        # switch and no per-client framing (the read's frame bytes are shared).
        if (
            self._direct is not None
            and not self._queue
            and not self._sending
            and not self.closed
            and len(batch.events) <= self.frame_max_events
            and self._direct(batch.ws_frame)
        ):
            _tally[2] += 1
            self._sent(batch.events)
            return
        # one read always fits an empty queue (a few large payloads may exceed the byte bound)
        self._enqueue(batch, len(batch.events), batch.nbytes, fits_when_empty=True)

    def control(self, frame: Mapping[str, object]) -> None:
        """Queues a control frame; they count toward the bounds (a client flooding pings that it
        does not read is closed like any slow one)."""
        text = json.dumps(frame, separators=(",", ":"))
        self._enqueue(text, 1, len(text), fits_when_empty=False)

    def _enqueue(self, item: Chunk, events: int, nbytes: int, *, fits_when_empty: bool) -> None:
        if self.closed:
            return
        was_empty = not self._queue
        self._queue.append(item)
        self._q_events += events
        self._q_bytes += nbytes
        over = self._q_events > self.max_events or self._q_bytes > self.max_bytes
        if over and not (fits_when_empty and was_empty):
            metrics.SLOW_CLOSES.inc()
            log.warning(
                "closing a slow client of %s: %d events / %d bytes waiting", self.tenant, self._q_events, self._q_bytes
            )
            self.close_soon(CLOSE_SLOW, "slow consumer: queue overflow; resume with since=<the last event id you got>")
            return
        self._ready.set()

    async def wait_room(self, nbytes: int = 0) -> None:
        """Until the queue is at most half full and `nbytes` more fit, or it is empty (a replay's pace)."""
        while (
            not self.closed
            and self._queue
            and (self._q_events > self.max_events // 2 or self._q_bytes + nbytes > self.max_bytes)
        ):
            self._drained.clear()
            await self._drained.wait()

    def close_soon(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._ready.set()
        self._drained.set()
        task = asyncio.create_task(self._closing(code, reason[:120]))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _closing(self, code: int, reason: str) -> None:
        # The close frame queues behind what the client has not read yet; a client that reads
        # nothing for CLOSE_GRACE_S has its connection dropped instead.
        try:
            await asyncio.wait_for(self._close(code, reason), CLOSE_GRACE_S)
        except TimeoutError:
            log.info("a client of %s did not take its close frame; dropping the connection", self.tenant)
        finally:
            self.finished.set()

    # -- writer -----------------------------------------------------------------------------
    async def write_loop(self) -> None:
        """Sends what is queued, as few frames as it can: one per turn, up to frame_max_events."""
        while not self.closed:
            await self._ready.wait()
            self._ready.clear()
            while self._queue and not self.closed:
                head = self._queue[0]
                self._sending = True
                try:
                    if isinstance(head, str):
                        self._queue.popleft()
                        self._q_events -= 1
                        self._q_bytes -= len(head)
                        await self._send(head)
                        self._drained.set()
                        continue
                    batch = self._take_batch()
                    await self._send(batch.text())
                finally:
                    self._sending = False
                self._sent(batch.events)
                self._drained.set()

    def _take_batch(self) -> Batch:
        """Queued events up to the next control frame, at most frame_max_events; a lone queued
        batch is sent as it is (its frame shared with other clients)."""
        head = self._queue[0]
        alone = len(self._queue) == 1 or not isinstance(self._queue[1], Batch)
        if isinstance(head, Batch) and len(head.events) <= self.frame_max_events and alone:
            self._queue.popleft()
            self._q_events -= len(head.events)
            self._q_bytes -= head.nbytes
            return head
        events: list[FeedEvent] = []
        nbytes = 0
        while self._queue and len(events) < self.frame_max_events:
            head = self._queue[0]
            if isinstance(head, str):
                break
            self._queue.popleft()
            room = self.frame_max_events - len(events)
            if len(head.events) > room:
                rest = Batch.of(head.events[room:])
                self._queue.appendleft(rest)
                head = Batch(head.events[:room], head.nbytes - rest.nbytes)
            events.extend(head.events)
            nbytes += head.nbytes
        self._q_events -= len(events)
        self._q_bytes -= nbytes
        return Batch(events, nbytes)

    def _sent(self, batch: list[FeedEvent]) -> None:
        oldest = batch[0]
        if oldest.notified is not None:
            metrics.NOTIFY_TO_WS.observe(time.monotonic() - oldest.notified)
        metrics.SOURCE_TO_WS.observe(max(0.0, time.time() - oldest.time))
        _tally[0] += len(batch)
        _tally[1] += 1
        self.delivered += len(batch)
        self.last_id = batch[-1].id


_background: set[asyncio.Task[None]] = set()
_tally = [0, 0, 0]
"""Events, frames and frames written directly since the last flush into the counters (one
lock-taking inc per second, not two per frame)."""


def flush_tally() -> None:
    events, frames, direct = _tally
    _tally[0] = _tally[1] = _tally[2] = 0
    if frames:
        metrics.EVENTS_RELAYED.inc(events)
        metrics.FRAMES_SENT.inc(frames)
    if direct:
        metrics.FRAMES_DIRECT.inc(direct)


async def tally_loop(interval: float = 0.5) -> None:
    while True:
        await asyncio.sleep(interval)
        flush_tally()


class TenantFeed:
    def __init__(self, hub: Hub, tenant: str) -> None:
        self.hub = hub
        self.tenant = tenant
        self.cursor = 0
        self.clients: set[Client] = set()
        self.ready = asyncio.Event()
        self.wake = asyncio.Event()
        self.notified_at: dict[int, float] = {}
        self.failure: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.last_read = 0.0

    async def run(self) -> None:
        hub = self.hub
        delay = hub.retry_initial_s
        while True:
            try:
                if not self.ready.is_set():
                    self.cursor = await hub.store.head(self.tenant)
                    self.ready.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), hub.poll_interval_s)
                # With many clients every read costs a frame per client: reads are spaced by
                # (clients x pace), so more events share a frame and the bridge keeps up.
                gap = len(self.clients) * hub.pace_per_client_s - (time.monotonic() - self.last_read)
                if gap > 0:
                    await asyncio.sleep(min(gap, MAX_PACE_S))
                self.wake.clear()
                self.last_read = time.monotonic()
                while True:
                    events = await hub.store.fetch(self.tenant, self.cursor, hub.fetch_batch)
                    if events:
                        hub.dispatch(self, events)
                    if len(events) < hub.fetch_batch:
                        break
                self.failure = None
                delay = hub.retry_initial_s
            except asyncio.CancelledError:
                raise
            except Exception as e:
                metrics.FEED_ERRORS.inc()
                self.failure = f"{type(e).__name__}: {e}"
                log.warning("reading the feed of %s failed (%s); again in %.1fs", self.tenant, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, hub.retry_max_s)
                self.wake.set()


class Hub:
    def __init__(
        self,
        store: FeedStore,
        *,
        fetch_batch: int,
        poll_interval_s: float,
        pace_per_client_s: float = 0.0,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
    ) -> None:
        self.store = store
        self.fetch_batch = fetch_batch
        self.poll_interval_s = poll_interval_s
        self.pace_per_client_s = pace_per_client_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.feeds: dict[str, TenantFeed] = {}
        self.clients: set[Client] = set()

    # -- clients ----------------------------------------------------------------------------
    def connect(self, client: Client) -> None:
        self.clients.add(client)
        metrics.CLIENTS.set(len(self.clients))

    async def subscribe(self, client: Client, flt: Filter, since_seq: int | None, wait_s: float) -> int:
        """Start relaying to `client`; with `since_seq`, first replay everything after it.
        Returns the client's starting seq."""
        feed = self.feeds.get(client.tenant)
        if feed is None:
            feed = self.feeds[client.tenant] = TenantFeed(self, client.tenant)
            feed.task = asyncio.create_task(feed.run(), name=f"feed-{client.tenant}")
        feed.clients.add(client)  # not yet subscribed: reads skip it until its cursor is set
        client.filter = flt
        await asyncio.wait_for(feed.ready.wait(), wait_s)
        if since_seq is None:
            client.cursor = feed.cursor
        else:
            client.cursor = since_seq
            client.replaying = True
        client.subscribed = True
        return client.cursor

    async def replay(self, client: Client) -> int:
        """Catch `client` up from the store until it meets its feed, then turn it live."""
        feed = self.feeds[client.tenant]
        sent = 0
        while not client.closed:
            target = feed.cursor
            if client.cursor >= target:
                client.replaying = False  # no await since the check: the next dispatch includes it
                return sent
            await client.wait_room()
            events = await self.store.fetch(client.tenant, client.cursor, self.fetch_batch, upto=target)
            matched = [e for e in events if client.filter.matches(e)]
            if matched:
                batch = Batch.of(matched)
                await client.wait_room(batch.nbytes)  # never overflows: it waits for room
                client.push(batch)
                sent += len(matched)
                metrics.REPLAYED.inc(len(matched))
            client.cursor = events[-1].seq if len(events) == self.fetch_batch else target
        return sent

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)
        metrics.CLIENTS.set(len(self.clients))
        feed = self.feeds.get(client.tenant)
        if feed is None:
            return
        feed.clients.discard(client)
        if not feed.clients:
            del self.feeds[client.tenant]
            if feed.task is not None:
                feed.task.cancel()

    def close_all(self, code: int, reason: str) -> None:
        for c in list(self.clients):
            c.close_soon(code, reason)

    # -- the feed -------------------------------------------------------------------------------
    def on_notify(self, payload: str) -> None:
        now = time.monotonic()
        try:
            note = json.loads(payload)
            tenant, seq = note["tenant"], int(note["seq"])
        except (ValueError, KeyError, TypeError):
            metrics.NOTIFICATIONS.labels("unreadable").inc()
            log.warning("a notification that is not an otbus reference was ignored: %.200s", payload)
            return
        feed = self.feeds.get(tenant)
        if feed is None:
            metrics.NOTIFICATIONS.labels("unfollowed").inc()
            return
        metrics.NOTIFICATIONS.labels("followed").inc()
        if seq > feed.cursor:
            if len(feed.notified_at) > 100_000:
                feed.notified_at.clear()
            feed.notified_at.setdefault(seq, now)
        feed.wake.set()

    def wake_all(self) -> None:
        """Read every feed from its cursor (after the listener was away: what it missed)."""
        for feed in self.feeds.values():
            feed.wake.set()

    def dispatch(self, feed: TenantFeed, events: list[FeedEvent]) -> None:
        pending = feed.notified_at
        if pending:
            for e in events:
                e.notified = pending.pop(e.seq, None)
        first, last = events[0].seq, events[-1].seq
        shared: dict[Filter, Batch] = {}
        for c in feed.clients:
            if c.replaying or c.closed or not c.subscribed:
                continue
            batch = shared.get(c.filter)
            if batch is None:
                batch = shared[c.filter] = Batch.of([e for e in events if c.filter.matches(e)])
            if c.cursor >= first:  # it caught up past part of this read while replaying
                batch = Batch.of([e for e in batch.events if e.seq > c.cursor])
            if last > c.cursor:
                c.cursor = last
            if batch.events:
                c.push(batch)
        feed.cursor = last
        if pending:
            for seq in [s for s in pending if s <= last]:
                del pending[seq]

    def failures(self) -> dict[str, str]:
        return {t: f.failure for t, f in self.feeds.items() if f.failure}
