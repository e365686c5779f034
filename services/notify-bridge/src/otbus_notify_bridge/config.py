"""The notify bridge's one settings class."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from otbus_core.auth import TokenMap
from otbus_core.settings import DatabaseSettings

__all__ = ["CHANNEL_PATTERN", "STORE_CHANNEL", "NotifyBridgeSettings"]

CHANNEL_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")
STORE_CHANNEL = "otbus_events"
"""The channel the event store's trigger notifies (schemas/sql/002_live_feed.sql)."""


class NotifyBridgeSettings(DatabaseSettings):
    service_name: str = "notify-bridge"
    port: int = 8084
    gc_freeze: bool = True  # NOTIFY->WebSocket p99 27-30 -> 19 ms at 1,000 events/s, 100 clients (bench)
    database_pool_size: int = 4

    channels: list[str] = [STORE_CHANNEL, "recommendation_inserted", "recommendation_status_changed"]
    """Channels to LISTEN on (JSON list): the event store's and those of relayed tables."""

    # -- credentials (Lakebase: OAuth tokens that expire hourly, connections that live 3 days) --
    database_password_file: Path | None = None
    """Read before every connection and used as the password (a token a sidecar refreshes)."""
    database_credentials_provider: str | None = None
    """`module:callable` returning the password (or awaitable of it), called before every connection."""
    max_connection_age_s: float = Field(24 * 3600, ge=10)
    """Connections are replaced before this age (Lakebase closes them after three days)."""
    reconnect_initial_s: float = Field(0.1, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    listener_check_s: float = Field(5.0, gt=0)
    """How often the idle listener connection is probed (a dead peer is found within this)."""
    poll_interval_s: float = Field(2.0, gt=0)
    """How often each followed tenant's feed is read even without a notification (a safety net)."""

    # -- clients ------------------------------------------------------------------------
    api_tokens: dict[str, str] = {}
    """Token -> tenant (JSON); tokens may be given as `sha256:<hex>` (the event store's format)."""
    api_tokens_file: Path | None = None
    jwt_secret: SecretStr | None = None
    """HS256 secret of signed tokens with a `tenant` claim and `exp` (short-lived HMI tokens)."""
    jwt_secret_file: Path | None = None
    max_clients: int = Field(5000, ge=1)
    client_queue_events: int = Field(20_000, ge=10)
    """Events waiting for one client, at most; past it the client is closed with 4008."""
    client_queue_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Bytes waiting for one client, at most; past it the client is closed with 4008."""
    frame_max_events: int = Field(1000, ge=1)
    """Events per outgoing frame, at most (frames carry what queued while the last one was sent)."""
    direct_writes: bool = True
    """Write a read's frame bytes straight to each idle client's connection (uvicorn's
    websockets-sansio server) instead of one ASGI send per client; false: ASGI sends only."""
    max_message_bytes: int = Field(64 * 1024, ge=1024)
    """Largest message a client may send (a subscribe); larger ones close with 1009."""
    fetch_batch: int = Field(1000, ge=1, le=100_000)
    """Events read from the store per query, live and replay."""
    read_pace_us_per_client: float = Field(30.0, ge=0, le=1000)
    """Reads of a tenant's feed are at least (its clients x this) apart, at most 200 ms: with 1,000
    clients one frame per client every 30 ms instead of one per transaction (0: no pacing)."""
    max_subject_prefixes: int = Field(64, ge=1)
    max_types: int = Field(64, ge=1)

    @field_validator("channels")
    @classmethod
    def _valid_channels(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one channel")
        for c in v:
            if not CHANNEL_PATTERN.match(c):
                raise ValueError(f"{c!r} does not match {CHANNEL_PATTERN.pattern}")
        return v

    @model_validator(mode="after")
    def _one_credential_source(self) -> NotifyBridgeSettings:
        if self.database_password_file and self.database_credentials_provider:
            raise ValueError("set database_password_file or database_credentials_provider, not both")
        if self.jwt_secret and self.jwt_secret_file:
            raise ValueError("set jwt_secret or jwt_secret_file, not both")
        if self.client_queue_events < 2 * self.fetch_batch:
            raise ValueError("client_queue_events must be at least twice fetch_batch (one read lands in a queue whole)")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be at least reconnect_initial_s")
        return self

    def token_map(self) -> TokenMap | None:
        """Static tokens; None when only signed tokens are configured."""
        if not self.api_tokens and self.api_tokens_file is None and self.jwt_secret_value() is not None:
            return None
        return TokenMap.load(self.api_tokens, self.api_tokens_file, "OTBUS_API_TOKENS")

    def jwt_secret_value(self) -> str | None:
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        if self.jwt_secret_file is not None:
            return self.jwt_secret_file.read_text().strip()
        return None
