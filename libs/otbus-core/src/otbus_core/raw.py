"""Columns of a raw reading batch (`schemas/avro/raw_reading_batch`), without Avro unions.

Values are split by kind into typed arrays plus one kind byte per reading, and absent
quality codes and source times are the smallest long: encoding a union costs fastavro
several times what a plain array item does, and ingest is measured in events per second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from otbus_core.exceptions import PoisonRecord

__all__ = ["NONE", "pack_values", "unpack_values"]

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
