"""UUIDv7 event ids (RFC 9562): time-ordered, monotonic within a process.

`uuid7()` and `uuid7_batch()` use a 74-bit counter seeded at random on each new
millisecond (RFC 9562 section 6.2, method 1), so ids made in the same millisecond
still sort in creation order. `derive_uuid7()` makes a deterministic id from
another id, keeping its millisecond: a stage that re-processes the same input
makes the same output id, which is what makes downstream idempotency work.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time

__all__ = ["derive_uuid7", "format_uuid", "uuid7", "uuid7_batch", "uuid7_block", "uuid7_millis", "uuid7_seq"]

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
    return uuid7_seq(uuid7_block(count), count)


def uuid7_block(count: int) -> str:
    """Reserve `count` consecutive ids and return the first; the rest follow by `uuid7_seq`."""
    ms, c = _next_block(max(1, count))
    return format_uuid(_pack(ms, c))


def uuid7_seq(first: str, count: int) -> list[str]:
    """The `count` ids of a block starting at `first` (same millisecond, counter + i)."""
    n = int(first.replace("-", ""), 16)
    counter = (((n >> _RAND_A_SHIFT) & 0xFFF) << 62) | (n & 0x3FFF_FFFF_FFFF_FFFF)
    if counter + count - 1 > _COUNTER_MAX:
        raise ValueError(f"a block of {count} ids from {first} overflows the UUIDv7 counter")
    base = (n >> 80 << 80) | _VER_VAR
    return [
        format_uuid(base | ((k >> 62) << _RAND_A_SHIFT) | (k & 0x3FFF_FFFF_FFFF_FFFF))
        for k in range(counter, counter + count)
    ]


def uuid7_millis(u: str) -> int:
    """Unix milliseconds encoded in a UUIDv7."""
    return int(u.replace("-", "")[:12], 16)


@functools.cache
def _mask(salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=6).digest()) or 1


def derive_uuid7(parent: str, salt: str = "") -> str:
    """A UUIDv7 for `parent` in another role (`salt`): same millisecond and version bits,
    the low 48 bits XORed with a mask made from `salt`. Distinct parents give distinct ids."""
    return f"{parent[:24]}{int(parent[24:], 16) ^ _mask(salt):012x}"
