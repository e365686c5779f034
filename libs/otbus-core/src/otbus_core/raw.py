"""Columns of a raw reading batch (`schemas/avro/raw_reading_batch`), without Avro unions.

Values are split by kind into typed arrays plus one kind byte per reading, and absent
quality codes and source times are the smallest long: encoding a union costs fastavro
several times what a plain array item does, and ingest is measured in events per second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from otbus_core.exceptions import PoisonRecord

__all__ = ["MAX_RECORD_BYTES", "NONE", "REPEATING_COLUMNS", "encode_in_chunks", "pack_values", "unpack_values"]

MAX_RECORD_BYTES = 900_000
"""Below the broker's default message.max.bytes (1 MB), with room for headers."""

T = TypeVar("T")

REPEATING_COLUMNS = ("tags", "data_types", "qualities", "quality_codes", "units")
"""Columns whose values recur from batch to batch (a plant's tags report again and again):
`codec.ColumnEncoder` caches their encodings."""

NONE = -(2**63)
"""Stands for 'not given' in `quality_codes` and `source_times`."""

_NULL, _BOOL, _LONG, _DOUBLE, _STRING = range(5)
_KEYS = ("", "booleans", "longs", "doubles", "strings")


def pack_values(values: Iterable[Any]) -> dict[str, Any]:
    """`value_kinds` and the typed arrays for `values` (null, bool, int, float or str each)."""
    kinds = bytearray()
    booleans: list[bool] = []
    longs: list[int] = []
    doubles: list[float] = []
    strings: list[str] = []
    add = kinds.append
    for v in values:
        c = v.__class__
        if c is float:
            add(_DOUBLE)
            doubles.append(v)
        elif c is int:
            add(_LONG)
            longs.append(v)
        elif c is str:
            add(_STRING)
            strings.append(v)
        elif c is bool:
            add(_BOOL)
            booleans.append(v)
        elif v is None:
            add(_NULL)
        else:
            raise TypeError(f"a reading's value must be null, bool, int, float or str, not {c.__name__}")
    return {"value_kinds": bytes(kinds), "booleans": booleans, "longs": longs, "doubles": doubles, "strings": strings}


def unpack_values(batch: Mapping[str, Any]) -> list[Any]:
    """The values of a batch in reading order; PoisonRecord when the columns do not add up."""
    kinds: bytes = batch["value_kinds"]
    arrays: list[Sequence[Any]] = [(), batch["booleans"], batch["longs"], batch["doubles"], batch["strings"]]
    counts = [kinds.count(k) for k in range(5)]
    if sum(counts) != len(kinds):
        raise PoisonRecord("value_kinds holds a kind other than 0-4")
    for k in range(1, 5):
        if counts[k] != len(arrays[k]):
            raise PoisonRecord(f"value_kinds counts {counts[k]} {_KEYS[k]} but the array has {len(arrays[k])}")
    iters = [iter(a) for a in arrays]
    return [next(iters[k]) if k else None for k in kinds]


def encode_in_chunks(
    items: Sequence[T], per: int, encode: Callable[[Sequence[T]], bytes], limit: int = MAX_RECORD_BYTES
) -> list[tuple[Sequence[T], bytes]]:
    """`items` encoded `per` at a time, as (chunk, value). A chunk that encodes to more than
    `limit` bytes (large strings) is halved and encoded again; OverflowError when a single
    item does not fit."""
    out: list[tuple[Sequence[T], bytes]] = []
    pending = [items[i : i + per] for i in range(0, len(items), per)]
    while pending:
        chunk = pending.pop(0)
        value = encode(chunk)
        if len(value) > limit:
            if len(chunk) > 1:
                half = len(chunk) // 2
                pending[:0] = [chunk[:half], chunk[half:]]
                continue
            raise OverflowError(f"one item encodes to {len(value)} bytes, over the {limit} limit")
        out.append((chunk, value))
    return out
