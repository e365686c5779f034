"""ingest-opcua against the simulator's real asyncua server, through real Kafka and the normalizer."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from otbus_core.schemas import TAG_RECORD
from otbus_core.topics import tags_topic
from tests.support import Infra, OpcUaSimulator, Service, free_port, topic_records, wait_until

pytestmark = pytest.mark.integration

STATIC = {
    "Int16Value": (-1234, "INT64"),
    "UInt32Value": (3_000_000_000, "INT64"),
    "DoubleValue": (3.5, "DOUBLE"),
    "BoolValue": (True, "BOOLEAN"),
    "StringValue": ("OTBUS-SIM", "STRING"),
}


def _tags(infra: Infra, tenant: str) -> list[dict[str, Any]]:
    return topic_records(infra, tags_topic(tenant), TAG_RECORD)


def _latest(infra: Infra, tenant: str) -> dict[str, dict[str, Any]]:
    return {r["source_tag"]: r for r in _tags(infra, tenant)}


def _adapter(infra: Infra, tenant: str, tmp: Path, sources: str, **env: str) -> Service:
    f = tmp / "sources.yaml"
    f.write_text(sources)
    return Service(
        "ingest-opcua",
        "otbus_ingest_opcua",
        {
            **infra.env(),
            "OTBUS_TENANT": tenant,
            "OTBUS_SOURCES_FILE": str(f),
            "OTBUS_STATE_DIR": str(tmp / "state"),
            "OTBUS_PEER_UNREACHABLE_AFTER_S": "2",
            **env,
        },
        free_port(),
    )


def test_subscription_browse_status_codes_outage_and_discovery(
    infra: Infra, tenant: str, tmp_path: Path, normalizer: Service
) -> None:
    sim = OpcUaSimulator(free_port(), "--tags", "40", "--interval", "0.2")
    sim.start()
    dead_port = free_port()
    adapter = _adapter(
        infra,
        tenant,
        tmp_path,
        f"""
sources:
  - name: line_server
    protocol: opcua
    endpoint: "{sim.endpoint}"
    site: plant1
    area: area1
    browse_roots: ["Plant1/Area1"]
    nodes:
      - "Objects/2:Plant1/2:Static/2:Int16Value"
      - "Plant1/Static/UInt32Value"
      - "Plant1/Static/DoubleValue"
      - "Plant1/Static/BoolValue"
      - "Plant1/Static/StringValue"
      - "Plant1/Static/BadValue"
      - "Plant1/Static/UncertainValue"
      - "Plant1/Static/Counter"
      - "Plant1/Static/NoSuchNode"
    publishing_interval_ms: 100
    sampling_interval_ms: 50
""",
        OTBUS_DISCOVERY_TARGETS=json.dumps([f"127.0.0.1:{sim.port}", f"127.0.0.1:{dead_port}"]),
    )
    adapter.start()
    try:
        browsed = 40 // 5  # the simulator puts signals 0-399 in Area1; of 40, all; browse_roots finds them
        want = {f"Plant1/Static/{n}" for n in (*STATIC, "BadValue", "UncertainValue", "Counter")}

        def complete() -> dict[str, dict[str, Any]] | None:
            latest = _latest(infra, tenant)
            area = [t for t in latest if t.startswith("Plant1/Area1/")]
            return latest if want <= set(latest) and len(area) >= browsed else None

        latest = wait_until(complete, 60, "every variable in the tags topic")
        for name, (value, data_type) in STATIC.items():
            r = latest[f"Plant1/Static/{name}"]
            assert (r["value"], r["data_type"], r["quality"]) == (value, data_type, "GOOD"), r
            assert r["quality_code"] == 0 and r["source_time"] > 0
        bad = latest["Plant1/Static/BadValue"]
        assert bad["quality"] == "BAD" and bad["quality_code"] == 0x808B0000
        assert latest["Plant1/Static/UncertainValue"]["quality"] == "UNCERTAIN"
        area1 = [r for t, r in latest.items() if t.startswith("Plant1/Area1/")]
        assert len(area1) == 40  # every signal of the simulator is under Area1 with 40 tags
        assert all(r["path"].startswith("plant1/area1/") for r in area1)
        source = httpx.get(f"{adapter.url}/api/v1/sources/line_server", timeout=5).json()
        assert "NoSuchNode" in (source["status"]["last_error"] or "")
        counters = [r["value"] for r in _tags(infra, tenant) if r["source_tag"] == "Plant1/Static/Counter"]
        assert len(counters) >= 3 and counters == sorted(counters)  # every change, in order

        # discovery scans the configured targets only
        assert httpx.post(f"{adapter.url}/api/v1/discovery/scan", timeout=5).status_code == 202

        def scanned() -> list[dict[str, Any]] | None:
            got = httpx.get(f"{adapter.url}/api/v1/discovery/servers", timeout=5).json()
            return got["servers"] if got["count"] == 2 else None

        servers = {s["port"]: s for s in wait_until(scanned, 30, "the discovery scan")}
        assert servers[sim.port]["reachable"] and servers[sim.port]["name"] == "otbus OT simulator"
        assert not servers[dead_port]["reachable"]

        # the server goes away: readiness false, every variable BadNoCommunication; it returns: GOOD again
        sim.stop()
        wait_until(lambda: httpx.get(f"{adapter.url}/readyz", timeout=5).status_code == 503, 30, "readyz 503")

        def lost() -> bool:
            latest = _latest(infra, tenant)
            return all(r["quality_code"] == 0x80310000 and r["quality"] == "BAD" for r in latest.values())

        wait_until(lost, 30, "every variable BadNoCommunication")
        sim.start()
        wait_until(lambda: httpx.get(f"{adapter.url}/readyz", timeout=5).status_code == 200, 60, "readyz 200")
        wait_until(lambda: _latest(infra, tenant)["Plant1/Static/DoubleValue"]["quality"] == "GOOD", 30, "GOOD again")
    finally:
        adapter.stop()
        sim.stop()


def test_polling_with_sign_and_encrypt_username_and_certificate_trust(
    infra: Infra, tenant: str, tmp_path: Path, normalizer: Service
) -> None:
    sim = OpcUaSimulator(
        free_port(),
        "--tags",
        "4",
        "--security",
        "encrypt",
        "--user",
        "operator:s3cret",
        "--pki",
        str(tmp_path / "sim-pki"),
    )
    sim.start()
    sources = f"""
sources:
  - name: secure_server
    protocol: opcua
    endpoint: "{sim.endpoint}"
    security_mode: SignAndEncrypt
    security_policy: {{policy}}
    username: operator
    password: {{{{env: OPCUA_TEST_PASSWORD}}}}
    polling_mode: true
    polling_interval_ms: 200
    nodes: ["Plant1/Static/DoubleValue", "Plant1/Static/Counter"]
    {{pin}}
"""
    adapter = _adapter(
        infra, tenant, tmp_path, sources.format(policy="Basic256Sha256", pin=""), OPCUA_TEST_PASSWORD="s3cret"
    )
    adapter.start()
    try:
        wait_until(lambda: "Plant1/Static/Counter" in _latest(infra, tenant), 60, "readings over SignAndEncrypt")
        assert _latest(infra, tenant)["Plant1/Static/DoubleValue"]["value"] == 3.5
        trusted = tmp_path / "state" / "ingest-opcua" / "pki" / "trusted" / "secure_server.sha256"
        assert trusted.exists()  # trusted on first use, and kept
        assert (tmp_path / "state" / "ingest-opcua" / "pki" / "client_cert.der").exists()
        shown = httpx.get(f"{adapter.url}/api/v1/sources/secure_server", timeout=5).json()
        assert shown["password"] == {"env": "OPCUA_TEST_PASSWORD"}  # a reference, never the secret
    finally:
        adapter.stop()
    # pinned to another certificate: refused, and readiness says why
    adapter = _adapter(
        infra,
        tenant,
        tmp_path,
        sources.format(policy="Aes256Sha256RsaPss", pin='server_certificate_sha256: "' + "ab" * 32 + '"'),
        OPCUA_TEST_PASSWORD="s3cret",
    )
    with pytest.raises(RuntimeError, match="did not become ready"):
        adapter.start(ready_timeout=8)
    try:
        assert "is not the pinned" in adapter.log_tail(200)
    finally:
        adapter.stop()
    # pinned to the server's own certificate, over Aes256Sha256RsaPss: readings flow again
    fingerprint = trusted.read_text().strip()
    before = len(_tags(infra, tenant))
    adapter = _adapter(
        infra,
        tenant,
        tmp_path,
        sources.format(policy="Aes256Sha256RsaPss", pin=f'server_certificate_sha256: "{fingerprint}"'),
        OPCUA_TEST_PASSWORD="s3cret",
    )
    adapter.start()
    try:
        wait_until(lambda: len(_tags(infra, tenant)) >= before + 4, 60, "readings over Aes256")
        shown = httpx.get(f"{adapter.url}/api/v1/sources/secure_server", timeout=5).json()
        assert shown["security_policy"] == "Aes256Sha256RsaPss" and shown["security_mode"] == "SignAndEncrypt"
        assert _latest(infra, tenant)["Plant1/Static/DoubleValue"]["value"] == 3.5
    finally:
        adapter.stop()
        sim.stop()


def test_sign_only_aes128_subscriptions_with_absolute_deadbands(
    infra: Infra, tenant: str, tmp_path: Path, normalizer: Service
) -> None:
    """Messages signed, not encrypted (Aes128Sha256RsaOaep, Sign), and each source's absolute
    deadband applied by the server to its monitored items. The simulator's server (asyncua)
    compares each sample with the previous one: a counter stepping by 1 passes a deadband of
    0.5 on every step and never passes one of 2.5 (only the initial value is sent)."""
    sim = OpcUaSimulator(
        free_port(), "--tags", "4", "--security", "sign", "--interval", "0.1", "--pki", str(tmp_path / "pki")
    )
    sim.start()
    common = f"""
    protocol: opcua
    endpoint: "{sim.endpoint}"
    security_mode: Sign
    security_policy: Aes128Sha256RsaOaep
    publishing_interval_ms: 50
    sampling_interval_ms: 0
    nodes: ["Plant1/Static/Counter"]"""
    adapter = _adapter(
        infra,
        tenant,
        tmp_path,
        f"""
sources:
  - name: fine{common}
    deadband: {{type: absolute, value: 0.5}}
  - name: coarse{common}
    deadband: {{type: absolute, value: 2.5}}
""",
    )
    adapter.start()

    def counter(source: str) -> list[Any]:
        return [r["value"] for r in _tags(infra, tenant) if r["source_id"] == source]

    try:
        wait_until(lambda: len(counter("fine")) >= 20, 60, "twenty counter readings over a signed channel")
        shown = httpx.get(f"{adapter.url}/api/v1/sources/fine", timeout=5).json()
    finally:
        adapter.stop()
        sim.stop()
    fine, coarse = counter("fine"), counter("coarse")
    assert {b - a for a, b in itertools.pairwise(fine)} == {1}, fine[:20]
    # conforming servers send every third value, asyncua only the first: never a step of 2.5 or less
    assert all(b - a > 2.5 for a, b in itertools.pairwise(coarse)), coarse[:20]
    assert 1 <= len(coarse) <= len(fine) // 2, f"a deadband of 2.5 let through {coarse[:20]}"
    assert shown["security_mode"] == "Sign" and shown["security_policy"] == "Aes128Sha256RsaOaep"
