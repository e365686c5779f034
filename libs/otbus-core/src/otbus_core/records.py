"""Records the runner moves between handlers and Kafka."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DeadLetter", "OutRecord", "Outcome"]


@dataclass(slots=True)
class OutRecord:  # not frozen: a frozen dataclass takes three times as long to make
    topic: str
    value: bytes
    key: str | bytes | None
    headers: Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something a stage rejected, with everything needed to look at it again."""

    stage: str
    reason: str
    tenant: str | None = None
    error_type: str | None = None
    source_id: str | None = None
    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    item_index: int | None = None
    original_key: bytes | None = None
    original_value: bytes | None = None
    original_headers: Sequence[tuple[str, bytes | None]] = ()
    causation_id: str | None = None


@dataclass(slots=True)
class Outcome:
    """What a handler made of a batch: records to produce and records to dead-letter."""

    outputs: list[OutRecord] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
