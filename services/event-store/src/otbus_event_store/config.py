"""The event store's one settings class."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from otbus_core.auth import TokenMap
from otbus_core.settings import DatabaseSettings

__all__ = ["EventStoreSettings"]

_RAW_OR_DLQ = re.compile(r"\.ot\.(raw\.|dlq\.)")


class EventStoreSettings(DatabaseSettings):
    service_name: str = "event-store"
    port: int = 8081
    consume: bool = True
    """Run the Kafka consumer in this process (turn off to scale the query API alone)."""
    group_id: str = "otbus-event-store"
    instance_id: str | None = None
    extra_topics: list[str] = []
    """Further event topics or '^regex' patterns to store besides every tenant's tags topic."""
    batch_size: int = Field(20_000, ge=1, le=100_000)
    """Events per offset commit, at most (written as COPYs of 1,000 while the next ones are made).
    Only a backlog fills a batch; at a steady rate a batch is what arrived since the last one."""
    switch_interval_ms: float = Field(0.5, gt=0, le=100)
    """Python's 5 ms let the decoding thread starve the COPY thread between two socket writes, so
    PostgreSQL sat idle; 0.5 ms keeps both busy (about 1.3x the rows per second, see bench/)."""
    gc_thresholds: tuple[int, int, int] | None = (100_000, 50, 100)
    """A batch holds 20,000 messages: with Python's (700, 10, 10) the collector ran through them
    while the next batch was fetched, 50-150 ms against 48 ms, with PostgreSQL waiting (bench/)."""
    batch_timeout_ms: int = Field(100, ge=1)
    """How long to wait for the first record of a batch (a batch never waits for more)."""
    retention_days: int = Field(30, ge=1)
    partitions_ahead_days: int = Field(2, ge=1, le=60)
    api_tokens: dict[str, str] = {}
    """Bearer token -> tenant (JSON); tokens may be given as `sha256:<hex>`."""
    api_tokens_file: Path | None = None
    query_timeout_ms: int = Field(15_000, ge=100)
    """Statement timeout of query API reads."""
    max_page_size: int = Field(1000, ge=1, le=10_000)
    max_statistics_range_hours: int = Field(24 * 7, ge=1)

    @field_validator("extra_topics")
    @classmethod
    def _no_raw_or_dlq(cls, topics: list[str]) -> list[str]:
        for t in topics:
            if _RAW_OR_DLQ.search(t):
                raise ValueError(f"{t!r}: raw and DLQ topics are not stored (they are not events of record)")
        return topics

    def token_map(self) -> TokenMap:
        return TokenMap.load(self.api_tokens, self.api_tokens_file, "OTBUS_API_TOKENS")
