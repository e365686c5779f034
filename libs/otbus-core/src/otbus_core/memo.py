"""A dict for caches that must not grow without end."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["BoundedDict"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(dict[K, V]):
    """A cache of at most `limit` entries: `put` starts it over when it is full.

    Clearing (rather than evicting one by one) keeps hits as cheap as a plain dict's; the
    caches here hold what a plant repeats (tags, qualities, encodings), so they refill at once.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
