"""ingest-http's one settings class."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from otbus_core.auth import TokenMap
from otbus_core.exceptions import ConfigError
from otbus_core.settings import OtbusSettings

__all__ = ["IngestHttpSettings"]


class IngestHttpSettings(OtbusSettings):
    model_config = SettingsConfigDict(env_prefix="OTBUS_", frozen=True, extra="ignore")

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

    @model_validator(mode="after")
    def _has_keys(self) -> IngestHttpSettings:
        if not self.api_keys and self.api_keys_file is None:
            raise ValueError("set OTBUS_API_KEYS or OTBUS_API_KEYS_FILE: no tenant could post")
        return self

    def token_map(self) -> TokenMap:
        keys = dict(self.api_keys)
        if self.api_keys_file is not None:
            try:
                doc = yaml.safe_load(self.api_keys_file.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"OTBUS_API_KEYS_FILE: cannot read {self.api_keys_file}: {e}") from None
            if not isinstance(doc, dict):
                raise ConfigError("OTBUS_API_KEYS_FILE: must map API keys to tenants")
            keys.update({str(k): str(v) for k, v in doc.items()})
        return TokenMap(keys, key_name="OTBUS_API_KEYS")
