"""ingest-http's one settings class."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from otbus_core.auth import TokenMap
from otbus_core.settings import OtbusSettings

__all__ = ["IngestHttpSettings"]


class IngestHttpSettings(OtbusSettings):
    service_name: str = "ingest-http"
    port: int = 8088
    api_keys: dict[str, str] = {}
    """API key -> tenant (JSON). Keys may be given as `sha256:<hex>`."""
    api_keys_file: Path | None = None
    """YAML or JSON file with the same mapping (merged with OTBUS_API_KEYS)."""
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_batch_items: int = Field(100_000, ge=1)
    max_tag_path_length: int = Field(1024, ge=16)
    max_string_length: int = Field(16_384, ge=16)
    readings_per_message: int = Field(1000, ge=1, le=20_000)
    """Readings per raw Kafka record (a request is split into records of at most this many)."""
    produce_timeout_ms: int = Field(15_000, ge=1000)
    """How long Kafka may take to acknowledge; past it the request gets 503 and nothing was written."""
    default_source: str = "ignition"
    source_contexts: dict[str, dict[str, str]] = {}
    """Source id -> ISA-95 context (site, area, line, equipment), sent with the readings."""

    def token_map(self) -> TokenMap:
        return TokenMap.load(self.api_keys, self.api_keys_file, "OTBUS_API_KEYS")
