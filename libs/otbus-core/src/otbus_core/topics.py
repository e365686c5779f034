"""Topic names, tenant validation and topic provisioning."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from otbus_core.exceptions import InvalidTenant, TransientError

__all__ = [
    "PROTOCOLS",
    "TENANT_PATTERN",
    "TENANT_RE",
    "TopicProvisioner",
    "TopicSpec",
    "dlq_topic",
    "ensure_topics",
    "raw_topic",
    "raw_topics_pattern",
    "tags_topic",
    "tags_topics_pattern",
    "tenant_of_topic",
    "tenant_topics",
    "validate_tenant",
]

log = logging.getLogger(__name__)

TENANT_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PROTOCOLS: Final = frozenset({"opcua", "mqtt", "sparkplug", "modbus", "http"})
TENANT_PATTERN: Final = r"[a-z0-9][a-z0-9-]{0,62}"
_TENANT = TENANT_PATTERN
_TOPIC_RE: Final = re.compile(rf"^({_TENANT})\.ot\.[a-z0-9.-]+\.v[0-9]+$")


# librdkafka subscribes by regex when a topic name starts with '^'.
def raw_topics_pattern(tenants: str = TENANT_PATTERN) -> str:
    """Subscription regex for the raw topics of the tenants matching `tenants` (a regex)."""
    return rf"^({tenants})\.ot\.raw\.(opcua|mqtt|sparkplug|modbus|http)\.v1$"


def tags_topics_pattern(tenants: str = TENANT_PATTERN) -> str:
    """Subscription regex for the tags topics of the tenants matching `tenants` (a regex)."""
    return rf"^({tenants})\.ot\.tags\.v1$"


def validate_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        raise InvalidTenant(f"tenant {tenant!r} does not match {TENANT_RE.pattern}")
    return tenant


def raw_topic(tenant: str, protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {sorted(PROTOCOLS)}")
    return f"{validate_tenant(tenant)}.ot.raw.{protocol}.v1"


def tags_topic(tenant: str) -> str:
    return f"{validate_tenant(tenant)}.ot.tags.v1"


def dlq_topic(tenant: str) -> str:
    return f"{validate_tenant(tenant)}.ot.dlq.v1"


def tenant_of_topic(topic: str) -> str:
    """The tenant prefix of an otbus topic name."""
    m = _TOPIC_RE.match(topic)
    if m is None:
        raise InvalidTenant(f"topic {topic!r} is not an otbus topic ({{tenant}}.ot.<dataset>.v<n>)")
    return m.group(1)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int = 3
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def tenant_topics(
    tenant: str,
    protocols: Iterable[str] = ("http",),
    *,
    partitions: int = 3,
    replication_factor: int = 1,
    retention_ms: int | None = None,
) -> list[TopicSpec]:
    """The topics one tenant needs: its raw topics, its tags topic and its DLQ."""
    cfg = {} if retention_ms is None else {"retention.ms": str(retention_ms)}
    names = [raw_topic(tenant, p) for p in protocols] + [tags_topic(tenant), dlq_topic(tenant)]
    return [TopicSpec(n, partitions, replication_factor, cfg) for n in names]


class TopicProvisioner:
    """Creates topics on first use (cached), for services that write to topics of any tenant."""

    def __init__(
        self,
        admin: AdminClient,
        *,
        partitions: int = 3,
        replication_factor: int = 1,
        retention_ms: int | None = None,
    ) -> None:
        self.admin = admin
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.config = {} if retention_ms is None else {"retention.ms": str(retention_ms)}
        self._known: set[str] = set()

    def ensure(self, names: Iterable[str]) -> None:
        missing = set(names) - self._known
        if not missing:
            return
        specs = [TopicSpec(n, self.partitions, self.replication_factor, self.config) for n in sorted(missing)]
        try:
            ensure_topics(self.admin, specs, timeout=10)
        except KafkaException as e:
            raise TransientError(f"could not create topics {sorted(missing)}: {e}") from e
        self._known |= missing


def ensure_topics(admin: AdminClient, specs: Iterable[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Create the topics that are missing; report (not recreate) ones that differ.

    Returns the names created. Existing topics with another partition count or
    retention are logged as a warning: changing them is an operator's decision.
    """
    specs = list(specs)
    meta = admin.list_topics(timeout=timeout)
    existing = meta.topics
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config)) for s in missing],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
                log.info("created topic %s", name)
            except KafkaException as e:
                if e.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
    for s in specs:
        if s.name in existing and len(existing[s.name].partitions) != s.partitions:
            log.warning(
                "topic %s exists with %d partitions, configured %d; left as is",
                s.name,
                len(existing[s.name].partitions),
                s.partitions,
            )
    _report_config_drift(admin, [s for s in specs if s.name in existing and s.config], timeout)
    return created


def _report_config_drift(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> None:
    if not specs:
        return
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in specs]
    results = admin.describe_configs(resources, request_timeout=timeout)
    by_name = {s.name: s for s in specs}
    for res, fut in results.items():
        actual = {k: v.value for k, v in fut.result().items()}
        for key, want in by_name[res.name].config.items():
            if actual.get(key) != want:
                log.warning(
                    "topic %s has %s=%s, configured %s; left as is",
                    res.name,
                    key,
                    actual.get(key),
                    want,
                )
