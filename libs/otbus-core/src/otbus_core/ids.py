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

__all__ = [
    "derive_uuid7",
    "format_uuid",
    "uuid7",
    "uuid7_batch",
    "uuid7_block",
    "uuid7_millis",
    "uuid7_seq",
    "uuid7_seq_derived",
]

_VER_VAR = (0x7 << 76) | (0x2 << 62)
_RAND_A_SHIFT = 64
_COUNTER_BITS = 74
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_lock = threading.Lock()
_last_ms = 0
_counter = 0


def _pack(ms: int, counter: int) -> int:
    return (ms << 80) | _VER_VAR | _spread(counter)


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
    base, counter, head, low = _block(first, count)
    if head is not None:  # only the last 12 hex digits change: formatted in one C loop
        return [*map((head + "%012x").__mod__, range(low, low + count))]
    return [format_uuid(base | _spread(k)) for k in range(counter, counter + count)]


def uuid7_seq_derived(first: str, count: int, salt: str) -> tuple[list[bytes], list[bytes]]:
    """`uuid7_seq(first, count)` and `derive_uuid7` of each of those ids with `salt`, as ASCII."""
    _, _, head, low = _block(first, count)
    if head is None:  # the block carries past the low 48 bits: one id at a time
        ids = uuid7_seq(first, count)
        return [i.encode() for i in ids], [derive_uuid7(i, salt).encode() for i in ids]
    fmt = (head.encode() + b"%012x").__mod__
    mask = _mask(salt)
    block = range(low, low + count)
    return [*map(fmt, block)], [*map(fmt, [k ^ mask for k in block])]


def _block(first: str, count: int) -> tuple[int, int, str | None, int]:
    """(the block's millisecond with version and variant bits, its first counter, the first
    24 characters its ids share or None when they do not share them, the first id's low 48 bits)."""
    n = int(first.replace("-", ""), 16)
    if n >> 128:
        raise ValueError(f"{first!r:.60} has more than 128 bits")
    counter = _counter_of(n)
    if counter + count - 1 > _COUNTER_MAX:
        raise ValueError(f"a block of {count} ids from {first} overflows the UUIDv7 counter")
    base = (n >> 80 << 80) | _VER_VAR
    low = counter & _LOW48  # the low 48 bits of rand_b are the counter's
    if low + count > _LOW48 + 1:  # carries into the 4th group
        return base, counter, None, low
    return base, counter, format_uuid(base | _spread(counter))[:24], low


def _counter_of(n: int) -> int:
    return (((n >> _RAND_A_SHIFT) & 0xFFF) << 62) | (n & 0x3FFF_FFFF_FFFF_FFFF)


def _spread(counter: int) -> int:
    """A counter's bits in their places: the top 12 in rand_a, the low 62 in rand_b."""
    return ((counter >> 62) << _RAND_A_SHIFT) | (counter & 0x3FFF_FFFF_FFFF_FFFF)


_LOW48 = (1 << 48) - 1


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
