"""ingest-mqtt settings and the MQTT source model."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from otbus_core.adapter import AdapterSettings
from otbus_core.sources import Secret, SourceConfig

__all__ = ["JsonMapping", "MqttSettings", "MqttSource", "Subscription", "TlsConfig"]


class MqttSettings(AdapterSettings):
    service_name: str = "ingest-mqtt"
    port: int = 8092


class Subscription(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    topic: str = Field(min_length=1, max_length=1024)
    qos: Literal[0, 1, 2] | None = None

    @field_validator("topic")
    @classmethod
    def _filter(cls, v: str) -> str:
        levels = v.split("/")
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError("'#' must be a whole level and the last one")
            if "+" in level and level != "+":
                raise ValueError("'+' must be a whole level")
        return v


class JsonMapping(BaseModel):
    """Where a reading is in a JSON payload: dotted paths (`data.value`); an array payload is
    read item by item. The tag is the topic unless `tag` names a field."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: str = "value"
    timestamp: str | None = "timestamp"
    timestamp_unit: Literal["ms", "s", "us", "ns"] = "ms"
    """Unit of numeric timestamps; text timestamps are read as ISO 8601."""
    quality: str | None = "quality"
    """A quality code (number, OPC DA style: 192 good) or text (GOOD, BAD...)."""
    tag: str | None = None
    data_type: str | None = None
    unit: str | None = None


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    """Skip the server host name check (never in production)."""


class MqttSource(SourceConfig):
    """An MQTT broker: `mqtt://host:1883` or `mqtts://host:8883` (TLS)."""

    SECRET_FIELDS = ("password",)

    protocol: Literal["mqtt"] = "mqtt"
    topics: list[str | Subscription] = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    """QoS of topics that do not give their own."""
    decoder: Literal["json", "value", "sparkplug"] | None = None
    """How payloads are read; default: sparkplug when every topic is under spBv1.0/, else json."""
    json_mapping: JsonMapping = JsonMapping()
    client_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,128}$")
    """Stable client id (default `otbus-<name>`): the broker keeps the session under it."""
    clean_start: bool = False
    """False: a persistent session, so QoS 1/2 messages sent while the adapter is away are kept."""
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)
    mqtt_version: Literal[5, 3] = 5
    """5 (MQTT 5) or 3 (MQTT 3.1.1)."""
    keepalive_s: int = Field(30, ge=5, le=3600)
    username: str | None = None
    password: Secret | None = None
    use_tls: bool = False
    tls: TlsConfig | None = None
    connect_timeout_s: float = Field(10.0, gt=0)
    sparkplug_rebirth: bool = True
    """Ask an edge node to rebirth (NCMD) on a sequence gap or data without a BIRTH."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("must be mqtt://host:1883 or mqtts://host:8883")
        if not u.hostname:
            raise ValueError("needs a host, e.g. mqtt://192.168.1.101:1883")
        _ = u.port
        return v

    @model_validator(mode="after")
    def _decoder_fits(self) -> MqttSource:
        if self.decoder == "sparkplug" and not all(s.topic.startswith("spBv1.0/") for s in self.subscriptions):
            raise ValueError("decoder sparkplug reads topics under spBv1.0/ only")
        return self

    @property
    def subscriptions(self) -> list[Subscription]:
        return [t if isinstance(t, Subscription) else Subscription(topic=t) for t in self.topics]

    @property
    def effective_decoder(self) -> str:
        if self.decoder:
            return self.decoder
        return "sparkplug" if all(s.topic.startswith("spBv1.0/") for s in self.subscriptions) else "json"

    @property
    def tls_enabled(self) -> bool:
        return self.use_tls or self.tls is not None or urlsplit(self.endpoint).scheme in ("mqtts", "ssl")

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""

    @property
    def tcp_port(self) -> int:
        return urlsplit(self.endpoint).port or (8883 if self.tls_enabled else 1883)
