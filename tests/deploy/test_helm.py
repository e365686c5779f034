"""The Helm chart, rendered by Helm itself: every service wired as its README says, the
adapters' sources accepted by the adapters' own loader, and bad values refused by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from otbus_ingest_modbus.config import ModbusSource
from otbus_ingest_mqtt.config import MqttSource
from otbus_ingest_opcua.config import OpcUaSource

from otbus_core.sources import SourceStore

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "otbus"
REQUIRED = ["kafka.bootstrap=kafka-0.kafka:9092", "database.urlSecret.name=otbus-db", "tokensSecret.name=otbus-tokens"]
SERVICES = {
    "ingest-http": 8088,
    "normalizer": 8082,
    "event-store": 8081,
    "notify-bridge": 8084,
    "zerobus-sink": 8083,
    "ingest-opcua": 8091,
    "ingest-mqtt": 8092,
    "ingest-modbus": 8093,
}
ADAPTERS = {
    "ingestOpcua": ("opcua", OpcUaSource),
    "ingestMqtt": ("mqtt", MqttSource),
    "ingestModbus": ("modbus", ModbusSource),
}


def _helm() -> str:
    found = os.environ.get("OTBUS_HELM") or shutil.which("helm")
    local = ROOT / ".otbus" / "tools" / "bin" / "helm"
    if found is None and local.exists():
        found = str(local)
    if found is None:
        pytest.fail("helm is not installed: scripts/test.sh builds it (go install helm.sh/helm/v3/cmd/helm)")
    return found


def _run(
    *args: str, sets: list[str] = REQUIRED, values: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [_helm(), *args, str(CHART)]
    for s in sets:
        argv += ["--set", s]
    if values is not None:
        argv += ["-f", "-"]
    return subprocess.run(
        argv, input=json.dumps(values) if values else None, text=True, capture_output=True, timeout=120
    )


def _render(values: dict[str, Any] | None = None, sets: list[str] = REQUIRED) -> list[dict[str, Any]]:
    proc = _run("template", "otbus", sets=sets, values=values)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _example_sources() -> dict[str, list[dict[str, Any]]]:
    doc = yaml.safe_load((ROOT / "deploy" / "config" / "sources.example.yaml").read_text())
    by: dict[str, list[dict[str, Any]]] = {}
    for s in doc["sources"]:
        by.setdefault(s["protocol"], []).append(s)
    return by


def _all_on() -> dict[str, Any]:
    sources = _example_sources()
    return {
        key: {"enabled": True, "tenant": "plant1", "sources": sources[protocol]}
        for key, (protocol, _) in ADAPTERS.items()
    }


def test_lint_passes() -> None:
    proc = _run("lint", "--strict", values=_all_on())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_service_is_a_deployment_with_probes_service_and_shared_settings() -> None:
    docs = _render(_all_on() | {"env": {"OTBUS_LOG_JSON": "true", "OTBUS_METADATA_REFRESH_MS": "2000"}})
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["labels"]["app.kubernetes.io/name"]: d for d in docs if d["kind"] == "Service"}
    assert set(deployments) == set(SERVICES) == set(services)
    for name, port in SERVICES.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["image"] == f"otbus/{name}:0.1.0"
        assert c["command"] == ["python", "-m", "otbus_" + name.replace("-", "_")]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        env = {e["name"]: e for e in c["env"]}
        assert env["OTBUS_KAFKA_BOOTSTRAP"]["value"] == "kafka-0.kafka:9092"
        assert env["OTBUS_PORT"]["value"] == str(port) and c["ports"][0]["containerPort"] == port
        assert env["OTBUS_METADATA_REFRESH_MS"]["value"] == "2000"  # global env reaches every service
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert services[name]["spec"]["ports"][0]["port"] == port
        assert services[name]["spec"]["selector"] == deployments[name]["spec"]["selector"]["matchLabels"]
    for name in ("event-store", "notify-bridge"):
        env = {e["name"]: e for e in deployments[name]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["OTBUS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "otbus-db", "key": "url"}
        assert env["OTBUS_API_TOKENS_FILE"]["value"] == "/etc/otbus/tokens/tokens.json"
    env = {e["name"]: e for e in deployments["ingest-http"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTBUS_API_KEYS_FILE"]["value"] == "/etc/otbus/tokens/tokens.json"
    assert "OTBUS_DATABASE_URL" not in env


def test_adapters_get_their_sources_a_volume_and_one_replica(tmp_path: Path) -> None:
    docs = _render(_all_on() | {"ingestModbus": _all_on()["ingestModbus"] | {"adminTokenSecret": "modbus-admin"}})
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    expected = _example_sources()
    for key, (protocol, model) in ADAPTERS.items():
        name = "otbus-ingest-" + protocol
        dep = deployments[name]["spec"]
        assert dep["replicas"] == 1 and dep["strategy"] == {"type": "Recreate"}
        assert f"{name}-state" in claims
        env = {e["name"]: e for e in dep["template"]["spec"]["containers"][0]["env"]}
        assert env["OTBUS_TENANT"]["value"] == "plant1"
        # what the chart renders is what the adapter itself accepts
        path = tmp_path / f"{protocol}.yaml"
        path.write_text(maps[f"{name}-sources"]["data"]["sources.yaml"])
        store = SourceStore(model, [protocol], path, tmp_path / f"state-{protocol}")
        assert sorted(s.name for s in store.all()) == sorted(s["name"] for s in expected[protocol]), key
    modbus_env = deployments["otbus-ingest-modbus"]["spec"]["template"]["spec"]["containers"][0]["env"]
    token = next(e for e in modbus_env if e["name"] == "OTBUS_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "modbus-admin", "key": "token"}


def test_zerobus_sink_embedded_emulator_or_databricks() -> None:
    local = {d["metadata"]["name"]: d for d in _render() if d["metadata"]["name"].startswith("otbus-zerobus-sink")}
    assert "otbus-zerobus-sink-state" in local  # the emulator's Delta tables are kept on a volume
    env = {
        e["name"]: e.get("value")
        for e in local["otbus-zerobus-sink"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["OTBUS_DATA_DIR"] == "/var/lib/otbus/delta" and "OTBUS_ZEROBUS_ENDPOINT" not in env

    remote = _render(
        {
            "zerobusSink": {
                "enabled": True,
                "port": 8083,
                "replicas": 3,
                "credentialsSecret": "sp",
                "endpoint": "1234567890.zerobus.us-west-2.cloud.databricks.com",
                "workspaceUrl": "https://dbc-1234.cloud.databricks.com",
            }
        }
    )
    dep = next(d for d in remote if d["kind"] == "Deployment" and d["metadata"]["name"] == "otbus-zerobus-sink")
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert dep["spec"]["replicas"] == 3 and "OTBUS_DATA_DIR" not in env
    assert env["OTBUS_ZEROBUS_ENDPOINT"] == "1234567890.zerobus.us-west-2.cloud.databricks.com"
    assert env["OTBUS_CLIENT_SECRET_FILE"] == "/etc/otbus/zerobus/client-secret"
    assert {"name": "zerobus", "secret": {"secretName": "sp"}} in pod["volumes"]
    assert not [d for d in remote if d["kind"] == "PersistentVolumeClaim"]


def test_kafka_secrets_come_from_a_secret() -> None:
    docs = _render({"kafka": {"bootstrap": "k:9093", "configSecret": {"name": "kafka-sasl", "key": "rdkafka.json"}}})
    for d in (d for d in docs if d["kind"] == "Deployment"):
        env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["OTBUS_KAFKA_CONFIG"] == {
            "name": "OTBUS_KAFKA_CONFIG",
            "valueFrom": {"secretKeyRef": {"name": "kafka-sasl", "key": "rdkafka.json"}},
        }


def test_a_service_can_be_turned_off() -> None:
    docs = _render(sets=[*REQUIRED, "notifyBridge.enabled=false", "zerobusSink.enabled=false"])
    names = {d["metadata"]["labels"]["app.kubernetes.io/name"] for d in docs if d["kind"] == "Deployment"}
    assert names == {"ingest-http", "normalizer", "event-store"}


@pytest.mark.parametrize(
    ("sets", "values", "named"),
    [
        ([], None, "kafka.bootstrap"),
        ([*REQUIRED, "ingestHttp.replicas=two"], None, "replicas"),
        ([*REQUIRED, "logLevel=LOUD"], None, "logLevel"),
        ([*REQUIRED, "kafka.bootstrap=no-port"], None, "bootstrap"),
        ([*REQUIRED, "eventStore.colour=red"], None, "colour"),
        ([*REQUIRED, "zerobusSink.endpoint=https://dbc-1.cloud.databricks.com/api/2.0/zerobus"], None, "endpoint"),
        ([*REQUIRED, "ingestMqtt.enabled=true"], None, "ingestMqtt.tenant"),
        ([*REQUIRED, "ingestMqtt.tenant=Plant_1"], None, "tenant"),
        (["kafka.bootstrap=k:9092", "tokensSecret.name=t"], None, "database.urlSecret.name"),
        ([*REQUIRED, "env.lower-case=x"], None, "env"),
        ([*REQUIRED, "env.OTBUS_BATCH_SIZE=1000000"], None, "env"),  # a number would render as 1e+06
        ([*REQUIRED, "ingestModbus.persistence.enabled=false"], None, "enabled"),  # a spool needs its volume
    ],
)
def test_bad_values_are_refused_by_name(sets: list[str], values: dict[str, Any] | None, named: str) -> None:
    proc = _run("template", "otbus", sets=sets, values=values)
    assert proc.returncode != 0
    assert named in proc.stderr, proc.stderr
