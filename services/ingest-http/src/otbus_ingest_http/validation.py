"""Validation of Ignition Event Streams tag events.

The payload is exactly the seed script handler's: `tagPath, tagProvider, value, quality,
qualityCode, timestamp, dataType`. A batch is decoded in one typed pass when every item
is valid (the fast path); otherwise each item is checked on its own, so valid items are
accepted and each invalid one is reported with the field at fault.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

__all__ = ["SECONDS_BELOW", "EventValidator", "ItemError", "TagEvent", "timestamp_micros"]

_FIELD = re.compile(r"at `\$(?:\[\d+\])?\.?([A-Za-z_][A-Za-z0-9_]*)?")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_MAX_TS_MS = 32_503_680_000_000  # year 3000
SECONDS_BELOW = 100_000_000_000  # a timestamp under this is seconds, not milliseconds (before 1973 in ms)

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


@dataclass(frozen=True, slots=True)
class ItemError:
    index: int
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class TagEvent(msgspec.Struct, frozen=True, gc=False):
    tagPath: str
    tagProvider: str | None = None
    value: bool | int | float | str | None = None
    quality: str | None = None
    qualityCode: int | None = None
    timestamp: int | float | None = None
    dataType: str | None = None


def _event_type(max_path: int, max_str: int) -> type[TagEvent]:
    """TagEvent with the configured limits as msgspec constraints."""
    path = Annotated[str, msgspec.Meta(min_length=1, max_length=max_path)]
    short = Annotated[str, msgspec.Meta(max_length=256)]
    text = Annotated[str, msgspec.Meta(max_length=max_str)]
    ts = Annotated[float, msgspec.Meta(ge=0, le=_MAX_TS_MS)]
    ts_int = Annotated[int, msgspec.Meta(ge=0, le=_MAX_TS_MS)]

    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("tagPath", path),
        ("tagProvider", short | None, None),
        ("value", None | bool | Int64 | float | text, None),
        ("quality", short | None, None),
        ("qualityCode", Int64 | None, None),
        ("timestamp", ts_int | ts | None, None),
        ("dataType", short | None, None),
    ]
    limited = msgspec.defstruct("TagEvent", fields, frozen=True, gc=False)
    return limited  # type: ignore[return-value]  # same fields as TagEvent, with the limits


class EventValidator:
    def __init__(self, max_path: int, max_str: int, max_items: int) -> None:
        self.event_type = _event_type(max_path, max_str)
        self.max_items = max_items
        self._batch = msgspec.json.Decoder(list[self.event_type])  # type: ignore[name-defined]
        self._one = msgspec.json.Decoder(self.event_type)

    def decode_batch(self, body: bytes) -> tuple[list[Any], list[tuple[int, Any, ItemError]]]:
        """Valid events, and (index, original item, error) for each invalid one.

        Raises ValueError when the body is not JSON or not a list of objects.
        """
        try:
            events = self._batch.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:  # strict JSON has no NaN or Infinity, so a typed decode is all the checking needed
            self._check_size(len(events))
            return events, []
        items = _loads(body)
        if isinstance(items, dict) and isinstance(items.get("events"), list):
            items = items["events"]
        if not isinstance(items, list):
            raise ValueError("body must be a JSON array of tag events")
        self._check_size(len(items))
        return self._one_by_one(items)

    def decode_one(self, body: bytes) -> tuple[Any | None, Any, ItemError | None]:
        try:
            ev = self._one.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        else:
            return ev, None, None
        item = _loads(body)
        if not isinstance(item, dict):
            raise ValueError("body must be a JSON object (a tag event)")
        good, bad = self._one_by_one([item])
        if good:
            return good[0], item, None
        return None, item, bad[0][2]

    def _check_size(self, n: int) -> None:
        if n > self.max_items:
            raise OverflowError(f"batch of {n} events is over the limit of {self.max_items}")

    def _one_by_one(self, items: list[Any]) -> tuple[list[Any], list[tuple[int, Any, ItemError]]]:
        good: list[Any] = []
        bad: list[tuple[int, Any, ItemError]] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                bad.append((i, item, ItemError(i, None, "event must be a JSON object")))
                continue
            try:
                ev = msgspec.convert(item, self.event_type, strict=True)
            except msgspec.ValidationError as e:
                bad.append((i, item, _item_error(i, str(e))))
                continue
            err = _value_error(i, ev)
            if err is not None:
                bad.append((i, item, err))
            else:
                good.append(ev)
        return good, bad


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)  # the standard parser accepts NaN/Infinity, so we can name them
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"invalid JSON: {e}") from None
    except RecursionError:
        raise ValueError("invalid JSON: nested too deeply") from None


def _value_error(i: int, ev: Any) -> ItemError | None:
    v = ev.value
    if isinstance(v, float) and not math.isfinite(v):
        return ItemError(i, "value", f"{v} is not allowed: send null with a BAD quality instead")
    ts = ev.timestamp
    if ts is not None and not math.isfinite(ts):
        return ItemError(i, "timestamp", f"{ts} is not a timestamp")
    return None


def _item_error(i: int, message: str) -> ItemError:
    m = _MISSING.search(message)
    if m:
        return ItemError(i, m.group(1), message)
    m = _FIELD.search(message)
    return ItemError(i, m.group(1) if m and m.group(1) else None, message)


def timestamp_micros(ts: float | int) -> int:
    """Epoch milliseconds (Ignition's `system.date.now().time`), or seconds when below 1e11."""
    if ts < SECONDS_BELOW:
        return int(ts * 1_000_000)
    return int(ts * 1000)
