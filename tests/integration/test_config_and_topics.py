"""Start-up errors that name the key, topic provisioning, partition retention."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from otbus_core.topics import TopicSpec, ensure_topics, tenant_topics
from otbus_event_store.migrate import migrate, purge_expired
from tests.support import Infra

pytestmark = pytest.mark.integration


def _run(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTBUS_")}
    return subprocess.run(
        [sys.executable, "-m", module], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("module", "env", "named"),
    [
        ("otbus_ingest_http", {}, "OTBUS_API_KEYS"),
        ("otbus_ingest_http", {"OTBUS_API_KEYS": '{"short": "acme"}'}, "OTBUS_API_KEYS"),
        ("otbus_ingest_http", {"OTBUS_API_KEYS": '{"a-long-enough-key-123": "Bad Tenant"}'}, "OTBUS_API_KEYS"),
        ("otbus_ingest_http", {"OTBUS_API_KEYS": "not json"}, "OTBUS_API_KEYS"),
        ("otbus_ingest_http", {"OTBUS_API_KEYS": '{"a-long-enough-key-123": "acme"}', "OTBUS_PORT": "x"}, "OTBUS_PORT"),
        ("otbus_normalizer", {"OTBUS_PATH_TEMPLATE": "{site}/{nope}/{tag_name}"}, "OTBUS_PATH_TEMPLATE"),
        ("otbus_normalizer", {"OTBUS_BATCH_SIZE": "0"}, "OTBUS_BATCH_SIZE"),
        ("otbus_normalizer", {"OTBUS_TENANTS": "(unclosed"}, "OTBUS_TENANTS"),
        ("otbus_event_store", {}, "OTBUS_API_TOKENS"),
        (
            "otbus_event_store",
            {"OTBUS_API_TOKENS": '{"a-long-enough-token-1": "acme"}', "OTBUS_EXTRA_TOPICS": '["acme.ot.raw.http.v1"]'},
            "OTBUS_EXTRA_TOPICS",
        ),
    ],
)
def test_invalid_config_fails_at_start_naming_the_key(module: str, env: dict[str, str], named: str) -> None:
    proc = _run(module, **env)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr


def test_topics_are_created_once_and_differences_reported(
    infra: Infra, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = AdminClient({"bootstrap.servers": infra.kafka_bootstrap})
    # the operator created the tags topic by hand with one partition
    admin.create_topics([NewTopic(f"{tenant}.ot.tags.v1", 1, 1)])[f"{tenant}.ot.tags.v1"].result()
    specs = tenant_topics(tenant, ("http", "opcua"), partitions=3, retention_ms=86_400_000)
    with caplog.at_level(logging.WARNING, logger="otbus_core.topics"):
        created = ensure_topics(admin, specs)
    assert sorted(created) == sorted([f"{tenant}.ot.raw.http.v1", f"{tenant}.ot.raw.opcua.v1", f"{tenant}.ot.dlq.v1"])
    md = admin.list_topics(timeout=10)
    assert len(md.topics[f"{tenant}.ot.tags.v1"].partitions) == 1, "left as the operator made it"
    assert len(md.topics[f"{tenant}.ot.dlq.v1"].partitions) == 3
    assert any("1 partitions, configured 3" in r.message for r in caplog.records)
    assert any("retention.ms" in r.message for r in caplog.records)
    assert ensure_topics(admin, specs) == []  # idempotent
    assert ensure_topics(admin, [TopicSpec(f"{tenant}.ot.dlq.v1", 3)]) == []


def test_expired_partitions_are_dropped(infra: Infra) -> None:
    migrate(infra.database_url)
    day = date(2001, 1, 1) + timedelta(days=int(datetime.now(UTC).timestamp()) % 3000)
    with psycopg.connect(infra.database_url, autocommit=True) as c:
        row = c.execute("SELECT otbus_ensure_partition(%s)", (day,)).fetchone()
        assert row is not None
        name = row[0]
        assert c.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (name,)
    assert purge_expired(infra.database_url, retention_days=30) >= 1
    with psycopg.connect(infra.database_url) as c:
        assert c.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
