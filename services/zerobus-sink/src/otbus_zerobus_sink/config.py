"""The zerobus-sink's one settings class."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from otbus_core.settings import OtbusSettings

__all__ = ["TABLE_PATTERN", "ZerobusSinkSettings"]

TABLE_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+$")
_REST_PATH = re.compile(r"/api/|/streams/|/ingest")


def _check_table(name: str) -> str:
    if not TABLE_PATTERN.match(name.replace("{tenant}", "t")):
        raise ValueError(f"{name!r} is not a three-part table name catalog.schema.table")
    return name


class ZerobusSinkSettings(OtbusSettings):
    service_name: str = "zerobus-sink"
    port: int = 8083

    # -- where ------------------------------------------------------------------
    zerobus_endpoint: str | None = None
    """The workspace's Zerobus gRPC endpoint, `WORKSPACE_ID.zerobus.REGION.cloud.databricks.com`
    (https:// is implied; http://host:port speaks plaintext, for the emulator). Unset: an
    emulator is started inside the sink and the tables are local Delta tables under `data_dir`."""
    workspace_url: str | None = None
    """The workspace URL, e.g. https://dbc-1234.cloud.databricks.com (OAuth tokens, Unity Catalog)."""
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_id_file: Path | None = None
    client_secret_file: Path | None = None
    """OAuth M2M credentials of a service principal; from env or from files (Docker/K8s secrets)."""
    headers_provider: str | None = None
    """`module:callable` returning a zerobus.HeadersProvider; replaces OAuth (custom auth, proxies)."""

    # -- routing ------------------------------------------------------------------
    default_table: str = "main.{tenant}.tag_events"
    """Target for records no other rule routes; `{tenant}` is replaced by the record's tenant."""
    tenant_tables: dict[str, str] = {}
    """Tenant -> table (JSON)."""
    source_tables: dict[str, str] = {}
    """Source -> table (JSON); a key `tenant/source` applies to one tenant only. Wins over the tenant rules."""

    # -- batching and delivery ----------------------------------------------------------
    group_id: str = "otbus-zerobus-sink"
    instance_id: str | None = None
    batch_max_records: int = Field(50_000, ge=1, le=500_000)
    """Records per batch (one acknowledgment wait and one offset commit), at most. Every batch
    waits for its acknowledgment, so small batches cap the rate (bench/README.md)."""
    batch_linger_ms: int = Field(100, ge=0, le=60_000)
    """After the first record of a batch, wait at most this long for more (size or time, whichever first)."""
    records_per_message: int = Field(2000, ge=1, le=100_000)
    """Records per gRPC ingest message."""
    ack_timeout_s: float = Field(60.0, gt=0)
    """A batch not acknowledged within this long counts as failed and is sent again."""
    stream_recovery_retries: int = Field(4, ge=0)
    breaker_failures: int = Field(3, ge=1)
    """Failed batches in a row after which a target's circuit opens."""
    breaker_open_s: float = Field(30.0, gt=0)
    """How long an open circuit refuses a target before one trial batch is let through."""

    # -- the embedded emulator ------------------------------------------------------
    data_dir: Path = Path(".otbus/delta")
    """Where the embedded emulator keeps its Delta tables (one directory per catalog/schema/table)."""
    emulator_commit_interval_ms: int = Field(100, ge=1)

    @field_validator("zerobus_endpoint")
    @classmethod
    def _grpc_endpoint(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if _REST_PATH.search(v) or "/" in v.split("://", 1)[-1]:
            raise ValueError(
                f"{v!r} looks like a REST URL; Zerobus is a gRPC endpoint of the form "
                "WORKSPACE_ID.zerobus.REGION.cloud.databricks.com (no path)"
            )
        if ".zerobus." not in v and "://" not in v:
            raise ValueError(f"{v!r} is not a Zerobus endpoint (WORKSPACE_ID.zerobus.REGION.cloud.databricks.com)")
        return v

    @field_validator("default_table")
    @classmethod
    def _default_table(cls, v: str) -> str:
        return _check_table(v)

    @field_validator("tenant_tables", "source_tables")
    @classmethod
    def _tables(cls, v: dict[str, str]) -> dict[str, str]:
        for key, table in v.items():
            try:
                _check_table(table)
            except ValueError as e:
                raise ValueError(f"[{key}]: {e}") from None
        return v

    @model_validator(mode="after")
    def _credentials(self) -> ZerobusSinkSettings:
        if self.zerobus_endpoint is None or self.headers_provider is not None:
            return self
        if self.workspace_url is None:
            raise ValueError("OTBUS_WORKSPACE_URL is required with OTBUS_ZEROBUS_ENDPOINT (OAuth tokens come from it)")
        if self.oauth_client_id() is None or self.oauth_client_secret() is None:
            raise ValueError(
                "OAuth credentials are missing: set OTBUS_CLIENT_ID and OTBUS_CLIENT_SECRET "
                "(or OTBUS_CLIENT_ID_FILE / OTBUS_CLIENT_SECRET_FILE), or OTBUS_HEADERS_PROVIDER"
            )
        return self

    def oauth_client_id(self) -> str | None:
        if self.client_id_file is not None:
            return _read_secret(self.client_id_file, "OTBUS_CLIENT_ID_FILE")
        return self.client_id

    def oauth_client_secret(self) -> str | None:
        if self.client_secret_file is not None:
            return _read_secret(self.client_secret_file, "OTBUS_CLIENT_SECRET_FILE")
        return self.client_secret.get_secret_value() if self.client_secret is not None else None

    @property
    def embedded_emulator(self) -> bool:
        return self.zerobus_endpoint is None


def _read_secret(path: Path, key: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as e:
        raise ValueError(f"{key}: cannot read {path}: {e.strerror}") from None
    if not value:
        raise ValueError(f"{key}: {path} is empty")
    return value
