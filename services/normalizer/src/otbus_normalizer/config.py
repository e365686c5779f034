"""The normalizer's one settings class."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field

from otbus_core.exceptions import ConfigError
from otbus_core.settings import OtbusSettings

__all__ = ["NormalizerSettings"]


class NormalizerSettings(OtbusSettings):
    service_name: str = "normalizer"
    port: int = 8082
    group_id: str = "otbus-normalizer"
    instance_id: str | None = None
    """Stable per replica (transactional id and static group membership); defaults to the host name."""
    batch_size: int = Field(20, ge=1, le=10_000)
    """Raw records per transaction; each holds up to 1000 readings, so this bounds memory too."""
    batch_timeout_ms: int = Field(100, ge=1)
    """How long to wait for the first record of a batch (a batch never waits for more)."""
    gc_thresholds: tuple[int, int, int] | None = (100_000, 50, 100)
    """A transaction makes up to 20,000 tag records that live until it is produced: with Python's
    (700, 10, 10) the collector walked them again and again (about 30k against 34.5k events/s, bench/)."""
    path_template: str = "{site}/{area}/{line}/{equipment}/{signal_type}/{tag_name}"
    default_context: dict[str, str] = {
        "site": "site",
        "area": "area",
        "line": "line",
        "equipment": "equipment",
    }
    contexts_file: Path | None = None
    """YAML: `sources: {<source_id>: {site, area, line, equipment}}`; overrides the adapters' context."""

    def source_contexts(self) -> dict[str, dict[str, str]]:
        if self.contexts_file is None:
            return {}
        try:
            doc = yaml.safe_load(self.contexts_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"OTBUS_CONTEXTS_FILE: cannot read {self.contexts_file}: {e}") from None
        sources = doc.get("sources", {})
        if not isinstance(sources, dict) or not all(isinstance(v, dict) for v in sources.values()):
            raise ConfigError("OTBUS_CONTEXTS_FILE: 'sources' must map source ids to {site, area, line, equipment}")
        return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in sources.items()}
