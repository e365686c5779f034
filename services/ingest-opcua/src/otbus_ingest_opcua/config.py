"""ingest-opcua settings and the OPC-UA source model."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from otbus_core.adapter import AdapterSettings
from otbus_core.sources import Secret, SourceConfig

__all__ = ["Deadband", "OpcUaSettings", "OpcUaSource"]

_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")


class OpcUaSettings(AdapterSettings):
    service_name: str = "ingest-opcua"
    port: int = 8091
    discovery_targets: list[str] = []
    """host:port list that /api/v1/discovery/scan probes for OPC-UA servers (nothing else is scanned)."""

    @field_validator("discovery_targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _HOST_PORT.match(t):
                raise ValueError(f"{t!r} is not host:port")
        return v


class Deadband(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["absolute", "percent"] = "absolute"
    value: float = Field(ge=0)


class OpcUaSource(SourceConfig):
    """An OPC-UA server: `opc.tcp://host:4840[/path]`."""

    SECRET_FIELDS = ("password",)

    protocol: Literal["opcua"] = "opcua"
    nodes: list[str] = []
    """Variables to read: node ids (`ns=2;i=5`, `ns=2;s=Line1.Temp`) or browse paths
    (`Objects/2:Plant1/2:Static/2:Int16Value`, namespace indexes optional: `Plant1/Static/Int16Value`)."""
    browse_roots: list[str] = []
    """Folders (node ids or browse paths) whose variables are found by browsing, down to any depth."""
    variable_limit: int = Field(500, ge=1, le=100_000)
    """Most variables browsing adds (the rest is logged, not read)."""
    polling_mode: bool = False
    """Read every `polling_interval_ms` instead of subscribing."""
    polling_interval_ms: int = Field(1000, ge=10)
    publishing_interval_ms: int = Field(100, ge=10)
    sampling_interval_ms: int = Field(100, ge=0)
    queue_size: int = Field(10, ge=1, le=10_000)
    """Values the server keeps per monitored item between publishes (0 would lose fast changes)."""
    deadband: Deadband | None = None
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    security_policy: Literal["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = "Basic256Sha256"
    server_certificate_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F:]{64,95}$")
    """Pinned server certificate (SHA-256 of its DER); without it the first one seen is trusted and kept."""
    username: str | None = None
    password: Secret | None = None
    timeout_s: float = Field(10.0, gt=0)
    watchdog_s: float = Field(2.0, gt=0)
    """How often the connection is checked (a lost one is noticed within about this long)."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme != "opc.tcp":
            raise ValueError("must be opc.tcp://host:port[/path]")
        if not u.hostname:
            raise ValueError("needs a host, e.g. opc.tcp://192.168.1.100:4840")
        _ = u.port
        return v

    @model_validator(mode="after")
    def _something_to_read(self) -> OpcUaSource:
        if not self.nodes and not self.browse_roots:
            raise ValueError("give nodes or browse_roots: there is nothing to read")
        return self

    @property
    def pinned_sha256(self) -> str | None:
        return self.server_certificate_sha256.replace(":", "").lower() if self.server_certificate_sha256 else None
