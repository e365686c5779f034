"""UUIDv7 event ids (RFC 9562): time-ordered, monotonic within a process.

`uuid7()` and `uuid7_batch()` use a 74-bit counter seeded at random on each new
millisecond (RFC 9562 section 6.2, method 1), so ids made in the same millisecond
still sort in creation order. `derive_uuid7()` makes a deterministic id from
another id, keeping its millisecond: a stage that re-processes the same input
makes the same output id, which is what makes downstream idempotency work.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

__all__ = ["derive_uuid7", "format_uuid", "uuid7", "uuid7_batch", "uuid7_millis"]

_VER_VAR = (0x7 << 76) | (0x2 << 62)
_RAND_A_SHIFT = 64
_COUNTER_BITS = 74
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_lock = threading.Lock()
_last_ms = 0
_counter = 0


def _pack(ms: int, counter: int) -> int:
    # counter's top 12 bits go to rand_a, its low 62 bits to rand_b
    return (ms << 80) | _VER_VAR | ((counter >> 62) << _RAND_A_SHIFT) | (counter & 0x3FFF_FFFF_FFFF_FFFF)


def format_uuid(n: int) -> str:
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _next_block(count: int) -> tuple[int, int]:
    """Reserve `count` consecutive counter values; returns (ms, first counter)."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            # leave headroom so a burst within one millisecond cannot overflow
            _counter = int.from_bytes(os.urandom(10)) >> (80 - _COUNTER_BITS + 8)
        elif _counter + count > _COUNTER_MAX:  # pragma: no cover - needs 2**66 ids in 1 ms
            _last_ms += 1
            _counter = 0
        first = _counter
        _counter += count
        return _last_ms, first


def uuid7() -> str:
    ms, c = _next_block(1)
    return format_uuid(_pack(ms, c))


def uuid7_batch(count: int) -> list[str]:
    """`count` ids in increasing order, for one lock acquisition."""
    if count <= 0:
        return []
    ms, c = _next_block(count)
    base = (ms << 80) | _VER_VAR
    out = []
    for k in range(c, c + count):
        out.append(format_uuid(base | ((k >> 62) << _RAND_A_SHIFT) | (k & 0x3FFF_FFFF_FFFF_FFFF)))
    return out


def uuid7_millis(u: str) -> int:
    """Unix milliseconds encoded in a UUIDv7."""
    return int(u.replace("-", "")[:12], 16)


def derive_uuid7(parent: str, salt: str = "") -> str:
    """A UUIDv7 with `parent`'s millisecond and random bits from a hash of (parent, salt)."""
    digest = hashlib.blake2b(f"{parent}/{salt}".encode(), digest_size=10).digest()
    counter = int.from_bytes(digest) >> (80 - _COUNTER_BITS)
    return format_uuid(_pack(uuid7_millis(parent), counter))
