"""Settings base: pydantic-settings, env prefix `OTBUS_`, errors that name the key."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from otbus_core.exceptions import ConfigError
from otbus_core.topics import TENANT_PATTERN

__all__ = ["DatabaseSettings", "OtbusSettings", "load_settings"]

ENV_PREFIX = "OTBUS_"


class OtbusSettings(BaseSettings):
    """What every service shares. Services subclass it with their own fields."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    service_name: str = "otbus"
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"
    log_json: bool = True
    switch_interval_ms: float = Field(5.0, gt=0, le=100)
    """How long Python lets one thread run before another may take over (sys.setswitchinterval)."""
    gc_freeze: bool = False
    """Move what start-up made out of the garbage collector's reach (gc.freeze): a full collection
    then walks only what the service made since, not ~80k start-up objects (55-70 ms with every
    thread paused). Good for latency-bound services with little live data; services that hold
    large batches collect more often with it (the 25% rule then counts only their own objects),
    and an object made at start-up that is later dropped in a reference cycle is never freed."""
    gc_thresholds: tuple[int, int, int] | None = None
    """The garbage collector's thresholds (gc.set_threshold, JSON `[young, middle, old]`); None
    keeps Python's (700, 10, 10). Services that hold tens of thousands of records per batch
    collect far less often with a large first figure (the objects are freed by reference
    counting anyway; the collector only looks for cycles)."""

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_config: dict[str, str] = {}
    """Extra librdkafka settings (JSON), e.g. security.protocol and SASL; secrets are never logged."""
    schema_registry_url: str | None = None
    topic_partitions: int = 3
    topic_replication_factor: int = 1
    topic_retention_ms: int | None = None
    metadata_refresh_ms: int = 5000
    """How often pattern subscriptions look for new tenant topics."""
    tenants: str = TENANT_PATTERN
    """Regex of the tenants a consuming service serves (all by default); lets tenants be sharded."""

    @field_validator("gc_thresholds")
    @classmethod
    def _non_negative(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and min(v) < 0:
            raise ValueError("thresholds are counts: 0 or more (0 first turns the collector off)")
        return v

    @field_validator("tenants")
    @classmethod
    def _valid_regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from None
        return v


class DatabaseSettings(OtbusSettings):
    database_url: str = "postgresql://otbus:otbus@127.0.0.1:15432/otbus"
    database_pool_size: int = 10


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings; on invalid config raise ConfigError naming each `OTBUS_*` key at fault."""
    prefix = cls.model_config.get("env_prefix", "") or ""
    try:
        return cls(**overrides)
    except SettingsError as e:  # a value that is not even parseable (e.g. JSON for a dict field)
        m = re.search(r'field "([^"]+)"', str(e))
        key = f"{prefix}{m.group(1)}".upper() if m else "configuration"
        raise ConfigError(f"invalid configuration:\n  {key}: cannot be parsed ({e.__cause__ or e})") from None
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"])
            key = f"{prefix}{field}".upper() if err["loc"] else prefix.rstrip("_")
            lines.append(f"{key}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
