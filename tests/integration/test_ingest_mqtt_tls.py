"""ingest-mqtt against a Mosquitto that only speaks TLS and wants a user name and password:
QoS 2 messages arrive once each, also those published while the adapter was away, and a wrong
password or an untrusted server certificate is reported (source status, /readyz) and retried."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from otbus_core.schemas import TAG_RECORD
from otbus_core.topics import tags_topic
from tests.support import ARTIFACTS, Infra, Service, free_port, topic_records, wait_until

pytestmark = pytest.mark.integration

MOSQUITTO = "/usr/sbin/mosquitto"
USER, PASSWORD = "plant-gateway", f"pw-{uuid.uuid4().hex}"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: Any = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


class TlsBroker:
    """A Mosquitto of its own: TLS only, no anonymous clients, one user."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        ca_key, srv_key, other_key = _key(), _key(), _key()
        ca = _cert("otbus test CA", ca_key, None, ca_key, True)
        self.ca = _write(d / "ca.pem", ca)
        self.other_ca = _write(d / "other-ca.pem", _cert("someone else's CA", other_key, None, other_key, True))
        srv = _cert("127.0.0.1", srv_key, ca, ca_key, False)
        _write(d / "server.pem", srv)
        _write(d / "server.key", key=srv_key)
        (d / "passwd").touch(mode=0o600)
        subprocess.run(["mosquitto_passwd", "-b", str(d / "passwd"), USER, PASSWORD], check=True, capture_output=True)
        self.port = free_port()
        (d / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {self.ca}\ncertfile {d / 'server.pem'}\nkeyfile {d / 'server.key'}\n"
            "tls_version tlsv1.2\n"
            f"allow_anonymous false\npassword_file {d / 'passwd'}\n"
            "persistence false\nmax_queued_messages 0\n"
            f"log_dest file {d / 'mosquitto.log'}\nlog_type all\nuser root\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "mosquitto.out").open("wb") as out:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")], stderr=out, stdout=out)
        wait_until(lambda: self._connects(), 15, "the TLS broker")

    def _connects(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.out').read_text()}")
        try:
            c = self.client("probe")
            c.disconnect()
            return True
        except OSError:
            return False

    def client(self, name: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
        c.username_pw_set(USER, PASSWORD)
        c.tls_set(ca_certs=str(self.ca), cert_reqs=ssl.CERT_REQUIRED)
        c.connect("127.0.0.1", self.port, 30)
        return c

    def publish(self, messages: list[tuple[str, bytes]], qos: int = 2) -> None:
        c = self.client("test-pub")
        c.loop_start()
        for i in [c.publish(t, body, qos=qos) for t, body in messages]:
            i.wait_for_publish(30)
        c.loop_stop()
        c.disconnect()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        ARTIFACTS.mkdir(exist_ok=True)
        log = self.dir / "mosquitto.log"
        if log.exists():
            (ARTIFACTS / f"mosquitto-tls-{self.port}.log").write_text(log.read_text())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TlsBroker]:
    b = TlsBroker(tmp_path)
    b.start()
    yield b
    b.stop()


def _adapter(infra: Infra, tenant: str, tmp: Path, broker: TlsBroker, ca: Path, password_env: str) -> Service:
    (tmp / "sources.yaml").write_text(
        f"""
sources:
  - name: secure
    protocol: mqtt
    endpoint: "mqtts://127.0.0.1:{broker.port}"
    client_id: "otbus-tls-{tenant}"
    username: {USER}
    password: {{env: {password_env}}}
    tls: {{ca_file: "{ca}"}}
    topics: ["plant/{tenant}/#"]
    qos: 2
    site: plant1
    area: assembly
    line: line9
"""
    )
    return Service(
        "ingest-mqtt",
        "otbus_ingest_mqtt",
        {
            **infra.env(),
            "OTBUS_TENANT": tenant,
            "OTBUS_SOURCES_FILE": str(tmp / "sources.yaml"),
            "OTBUS_STATE_DIR": str(tmp / "state"),
            "OTBUS_PEER_UNREACHABLE_AFTER_S": "3",
            "MQTT_GATEWAY_PASSWORD": PASSWORD,
            "MQTT_WRONG_PASSWORD": "not-the-password",
        },
        free_port(),
    )


def _status(svc: Service) -> dict[str, Any]:
    return httpx.get(f"{svc.url}/api/v1/sources", timeout=5).json()["sources"][0]["status"]  # type: ignore[no-any-return]


def _mine(infra: Infra, tenant: str) -> list[dict[str, Any]]:
    return topic_records(infra, tags_topic(tenant), TAG_RECORD)


def test_tls_with_password_and_qos2_exactly_once_also_while_away(
    infra: Infra, tenant: str, tmp_path: Path, broker: TlsBroker, normalizer: Service
) -> None:
    adapter = _adapter(infra, tenant, tmp_path, broker, broker.ca, "MQTT_GATEWAY_PASSWORD")
    adapter.start()
    try:
        wait_until(lambda: _status(adapter)["connected"], 30, "connected over TLS")
        broker.publish([(f"plant/{tenant}/t{i % 5}", b'{"value": %d}' % i) for i in range(300)])
        wait_until(lambda: len(_mine(infra, tenant)) >= 300, 60, "300 tag records")

        # away while QoS 2 messages are published: the kept session holds them for the adapter
        assert adapter.stop() in (0, -15)
        broker.publish([(f"plant/{tenant}/away/t{i % 5}", b'{"value": %d}' % i) for i in range(200)])
        adapter.start()
        wait_until(lambda: len(_mine(infra, tenant)) >= 500, 60, "the 200 published while away")
        time.sleep(2)  # a duplicate would come now
        tags = _mine(infra, tenant)
    finally:
        adapter.stop()
    here = sorted(r["value"] for r in tags if "/away/" not in r["source_tag"])
    away = [r for r in tags if "/away/" in r["source_tag"]]
    assert here == list(range(300)), "each QoS 2 message once"
    assert sorted(r["value"] for r in away) == list(range(200))
    for t in range(5):  # per topic in the order published
        assert [r["value"] for r in away if r["source_tag"].endswith(f"/t{t}")] == list(range(t, 200, 5))
    assert all(r["path"].startswith("plant1/assembly/line9/") and r["quality"] == "GOOD" for r in tags)


@pytest.mark.parametrize(
    ("password_env", "trusted", "expected"),
    [
        ("MQTT_WRONG_PASSWORD", True, "refused"),
        ("MQTT_GATEWAY_PASSWORD", False, "certificate verify failed"),
    ],
)
def test_wrong_password_or_untrusted_server_is_reported_and_retried(
    infra: Infra, tenant: str, tmp_path: Path, broker: TlsBroker, password_env: str, trusted: bool, expected: str
) -> None:
    ca = broker.ca if trusted else broker.other_ca
    adapter = _adapter(infra, tenant, tmp_path, broker, ca, password_env)
    adapter.start(wait_ready=False)
    try:
        st = wait_until(lambda: (s := _status(adapter))["reconnects"] >= 2 and s, 30, "two failed attempts")
        assert not st["connected"]
        assert expected in (st["last_error"] or ""), st
        r = wait_until(lambda: (r := httpx.get(f"{adapter.url}/readyz", timeout=5)).status_code == 503 and r, 20, "503")
        assert "secure" in r.text
        used = PASSWORD if password_env == "MQTT_GATEWAY_PASSWORD" else "not-the-password"
        assert used not in adapter.log_tail(500), "the password is never logged"
    finally:
        adapter.stop()
