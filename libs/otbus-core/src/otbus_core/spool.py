"""A bounded, fsynced, on-disk queue of Kafka records: what an ingest adapter has read but
Kafka has not yet acknowledged.

Every record an adapter publishes is appended here first and produced from here, in order,
by `otbus_core.publisher.SpoolDrainer`; it is released only when Kafka has acknowledged it.
So a broker that is slow or away makes the spool grow instead of losing readings, a
restarted adapter sends what it had not delivered, and order is the order of appends.

Layout: a directory of segment files `<first sequence number>.seg` holding framed records
(4-byte big-endian length, 4-byte CRC-32 of the body, then the body as msgpack) and a
`checkpoint` file with the sequence number of the first record not yet acknowledged.
A torn record at the end of the last segment (a crash mid-write) is cut off at start.

Durability: appends are written at once (a process crash loses nothing: the kernel has
them) and fsynced by a flusher thread every `fsync_interval` seconds (a power loss can cost
that much), and on close. The checkpoint is rewritten at most every `checkpoint_interval`
seconds: after a crash, records acknowledged since then are produced again, with the same
event ids, which the consumers deduplicate.

Bound: `max_bytes` over all segments. When an append would pass it, the overflow policy
decides: `block` (the append waits for room: the source is slowed down), `drop_oldest`
(the oldest segment is deleted, delivered or not) or `drop_newest` (the append is refused).
Every reading dropped is counted, with the policy as the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import msgspec

from otbus_core.exceptions import ConfigError

__all__ = ["Overflow", "Spool", "SpoolRecord"]

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">II")  # body length, CRC-32 of the body
_MAX_RECORD = 64 * 1024 * 1024


class Overflow(StrEnum):
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class SpoolRecord(NamedTuple):
    """One Kafka record to produce, and how many readings it carries (for the drop counts)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    readings: int = 1


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[str, bytes | None, bytes, list[tuple[str, bytes]], int])


@dataclass
class _Segment:
    first: int  # sequence number of its first record
    path: Path
    size: int = 0
    readings: array[int] = field(default_factory=lambda: array("q"))  # per record
    offsets: array[int] = field(default_factory=lambda: array("q"))  # file offset per record

    @property
    def end(self) -> int:
        return self.first + len(self.readings)


class Spool:
    def __init__(
        self,
        directory: Path,
        max_bytes: int = 1024**3,
        overflow: Overflow | str = Overflow.BLOCK,
        segment_bytes: int | None = None,
        fsync_interval: float = 0.02,
        checkpoint_interval: float = 0.2,
    ) -> None:
        if max_bytes < 1024 * 1024:
            raise ConfigError(f"spool max_bytes {max_bytes} is below 1 MiB")
        self.directory = directory
        self.max_bytes = max_bytes
        self.overflow = Overflow(overflow)
        self.segment_bytes = segment_bytes or max(256 * 1024, min(64 * 1024 * 1024, max_bytes // 16))
        self.fsync_interval = fsync_interval
        self.checkpoint_interval = checkpoint_interval
        self.dropped: dict[str, int] = {}  # reason -> readings dropped
        self.appended_readings = 0
        self._lock = threading.Condition()
        self._sync_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the last segment, open for appending
        self._dirty = False
        self._acked = 0  # first sequence number not acknowledged
        self._checkpointed = -1
        self._read = 0  # next sequence number to hand out
        self._closed = False
        directory.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._flusher = threading.Thread(target=self._flush_loop, name="spool-fsync", daemon=True)
        self._flusher.start()

    # -- start-up -------------------------------------------------------------------

    def _recover(self) -> None:
        ck = self.directory / "checkpoint"
        acked = int(ck.read_text().strip() or 0) if ck.exists() else 0
        for path in sorted(self.directory.glob("*.seg"), key=lambda p: int(p.stem)):
            seg = _Segment(int(path.stem), path)
            with path.open("rb") as f:
                data = f.read()
            pos = 0
            while pos + _FRAME.size <= len(data):
                n, crc = _FRAME.unpack_from(data, pos)
                body = data[pos + _FRAME.size : pos + _FRAME.size + n]
                if len(body) < n or zlib.crc32(body) != crc:
                    break
                try:
                    readings = _decoder.decode(body)[4]
                except msgspec.DecodeError:
                    break
                seg.offsets.append(pos)
                seg.readings.append(readings)
                pos += _FRAME.size + n
            if pos < len(data):
                log.warning("spool: %s ends in a torn record after byte %d: cut off", path.name, pos)
                with path.open("r+b") as f:
                    f.truncate(pos)
            seg.size = pos
            if self._segments and seg.first != self._segments[-1].end:
                log.warning("spool: %s does not follow the previous segment; records may be missing", path.name)
            self._segments.append(seg)
        for seg in list(self._segments):
            if seg.end <= acked and seg is not self._segments[-1]:
                seg.path.unlink(missing_ok=True)
                self._segments.remove(seg)
        if self._segments:
            self._acked = max(acked, self._segments[0].first)
            self._acked = min(self._acked, self._segments[-1].end)
            last = self._segments[-1]
            self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
        else:
            self._acked = acked
            self._new_segment(acked)
        self._read = self._acked
        if self.depth_records:
            log.info("spool: %d records (%d readings) not yet delivered", self.depth_records, self.depth_readings)

    def _new_segment(self, first: int) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.directory / f"{first:020d}.seg"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append(_Segment(first, path))
        _fsync_dir(self.directory)

    # -- writing --------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def append(self, records: Sequence[SpoolRecord], timeout: float | None = None) -> bool:
        """Append `records` in order. False when they were not taken (drop_newest, or `block`
        that timed out, or a closed spool); their readings are then counted as dropped."""
        frames = []
        for r in records:
            body = _encoder.encode((r.topic, r.key, r.value, r.headers, r.readings))
            if len(body) > _MAX_RECORD:
                raise ValueError(f"a spool record of {len(body)} bytes is over {_MAX_RECORD}")
            frames.append((_FRAME.pack(len(body), zlib.crc32(body)) + body, r.readings))
        need = sum(len(f) for f, _ in frames)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._room_for(need):
                if self._closed:
                    return self._drop(frames, "closed")
                if self.overflow is Overflow.DROP_NEWEST:
                    return self._drop(frames, "drop_newest")
                if self.overflow is Overflow.DROP_OLDEST:
                    if not self._drop_oldest_segment():
                        break  # nothing left to drop: this append alone is larger than the bound
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return self._drop(frames, "block_timeout")
                self._lock.wait(left if left is not None else 1.0)
            if self._closed:
                return self._drop(frames, "closed")
            seg = self._segments[-1]
            if seg.size >= self.segment_bytes:
                self._new_segment(seg.end)
                seg = self._segments[-1]
            buf = b"".join(f for f, _ in frames)
            if self._fd is None:
                raise RuntimeError("spool segment is not open")
            _write_all(self._fd, buf)
            pos = seg.size
            for f, readings in frames:
                seg.offsets.append(pos)
                seg.readings.append(readings)
                pos += len(f)
                self.appended_readings += readings
            seg.size = pos
            self._dirty = True
            self._lock.notify_all()
        return True

    def _room_for(self, need: int) -> bool:
        return self.size_bytes + need <= self.max_bytes

    def _drop(self, frames: list[tuple[bytes, int]], reason: str) -> bool:
        n = sum(r for _, r in frames)
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        log.warning("spool full (%s): %d readings dropped (%d in all)", reason, n, sum(self.dropped.values()))
        return False

    def _drop_oldest_segment(self) -> bool:
        if len(self._segments) == 1:
            if not self._segments[0].readings:
                return False
            self._new_segment(self._segments[0].end)  # roll over so the full one can go
        seg = self._segments.pop(0)
        lost = sum(seg.readings[max(0, self._acked - seg.first) :])
        if lost:
            self.dropped["drop_oldest"] = self.dropped.get("drop_oldest", 0) + lost
            log.warning("spool full: dropped the oldest %d undelivered readings (policy drop_oldest)", lost)
        seg.path.unlink(missing_ok=True)
        self._acked = max(self._acked, seg.end)
        self._read = max(self._read, seg.end)
        return True

    # -- reading and acknowledging ----------------------------------------------------

    def read(self, max_records: int, timeout: float = 0.0) -> list[tuple[int, SpoolRecord]]:
        """Up to `max_records` records after the last one handed out, with their sequence numbers."""
        with self._lock:
            if self._read >= self._segments[-1].end and timeout > 0 and not self._closed:
                self._lock.wait(timeout)
            start = self._read
            picks: list[tuple[_Segment, int, int]] = []  # segment, first index, count
            n = 0
            for seg in self._segments:
                if seg.end <= start or n >= max_records:
                    continue
                i = max(0, start - seg.first)
                take = min(len(seg.readings) - i, max_records - n)
                if take > 0:
                    picks.append((seg, i, take))
                    n += take
            self._read = start + n
        out: list[tuple[int, SpoolRecord]] = []
        for seg, i, take in picks:
            lo = seg.offsets[i]
            hi = seg.offsets[i + take] if i + take < len(seg.offsets) else None
            try:
                with seg.path.open("rb") as f:
                    f.seek(lo)
                    data = f.read() if hi is None else f.read(hi - lo)
            except FileNotFoundError:  # dropped (drop_oldest) while we read: skip it
                continue
            pos = 0
            for k in range(take):
                n_, _crc = _FRAME.unpack_from(data, pos)
                t, key, value, headers, readings = _decoder.decode(data[pos + _FRAME.size : pos + _FRAME.size + n_])
                out.append((seg.first + i + k, SpoolRecord(t, key, value, headers, readings)))
                pos += _FRAME.size + n_
        return out

    def ack(self, upto: int) -> None:
        """Every record before sequence number `upto` is delivered."""
        with self._lock:
            if upto <= self._acked:
                return
            self._acked = upto
            while len(self._segments) > 1 and self._segments[0].end <= upto:
                self._segments.pop(0).path.unlink(missing_ok=True)
            self._lock.notify_all()

    def rewind(self) -> None:
        """Hand out again everything not acknowledged (after the producer was replaced)."""
        with self._lock:
            self._read = self._acked

    @property
    def depth_records(self) -> int:
        return self._segments[-1].end - self._acked if self._segments else 0

    @property
    def depth_readings(self) -> int:
        total = 0
        for seg in self._segments:
            if seg.end > self._acked:
                total += sum(seg.readings[max(0, self._acked - seg.first) :])
        return total

    @property
    def acked(self) -> int:
        return self._acked

    # -- durability -----------------------------------------------------------------

    def _flush_loop(self) -> None:
        last_checkpoint = 0.0
        while True:
            with self._lock:
                if self._closed:
                    return
            time.sleep(self.fsync_interval)
            now = time.monotonic()
            checkpoint = now - last_checkpoint >= self.checkpoint_interval
            self.sync(checkpoint)
            if checkpoint:
                last_checkpoint = now

    def sync(self, checkpoint: bool = True) -> None:
        """fsync what was appended; with `checkpoint`, also record how far delivery got."""
        with self._sync_lock:
            self._sync(checkpoint)

    def _sync(self, checkpoint: bool) -> None:
        with self._lock:
            fd, dirty, acked = self._fd, self._dirty, self._acked
            self._dirty = False
        if dirty and fd is not None:
            with contextlib.suppress(OSError):  # closed concurrently: close() syncs itself
                os.fsync(fd)
        if checkpoint and acked != self._checkpointed:
            tmp = self.directory / "checkpoint.tmp"
            with tmp.open("w") as f:
                f.write(str(acked))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.directory / "checkpoint")
            self._checkpointed = acked

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        self._flusher.join(timeout=5)
        self.sync()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _write_all(fd: int, buf: bytes) -> None:
    view = memoryview(buf)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
