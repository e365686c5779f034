"""Test support: real infrastructure, service processes, Kafka and HTTP helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from otbus_core.codec import AvroCodec

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "deploy" / "local" / "infra.sh"
ARTIFACTS = REPO / "test-artifacts"
_CODEC = AvroCodec()


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    database_url: str
    database_admin_url: str
    mqtt_url: str

    def env(self) -> dict[str, str]:
        return {
            "OTBUS_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "OTBUS_DATABASE_URL": self.database_url,
            "OTBUS_MQTT_URL": self.mqtt_url,
        }


def infra_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INFRA), *args], check=check, text=True, capture_output=True, timeout=900)


def start_infra(*components: str) -> Infra:
    """Start (or reuse) the local infrastructure; externally given OTBUS_* URLs are used as they are."""
    proc = infra_cmd("start", *components, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"deploy/local/infra.sh start failed:\n{proc.stdout}\n{proc.stderr}")
    env = dict(os.environ)
    for line in infra_cmd("env").stdout.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export ") :].partition("=")
            env.setdefault(k, v.strip("'\""))
    return Infra(
        kafka_bootstrap=env["OTBUS_KAFKA_BOOTSTRAP"],
        database_url=env["OTBUS_DATABASE_URL"],
        database_admin_url=env.get("OTBUS_DATABASE_ADMIN_URL", env["OTBUS_DATABASE_URL"]),
        mqtt_url=env.get("OTBUS_MQTT_URL", ""),
    )


def new_tenant(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Service:
    """A service run as its own process, as in production (`python -m <module>`)."""

    name: str
    module: str
    env: dict[str, str]
    port: int
    log_path: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{self.name}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 60.0, wait_ready: bool = True) -> Service:
        env = {**os.environ, **self.env, "OTBUS_PORT": str(self.port), "OTBUS_HOST": "127.0.0.1"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=env, stdout=log, stderr=log)
        if not wait_ready:
            wait_until(lambda: self._ready() or self._alive_http(), ready_timeout, f"{self.name} HTTP")
            return self
        try:
            wait_until(self._ready, ready_timeout, f"{self.name} /readyz")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not become ready; log:\n{self.log_tail()}") from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _alive_http(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # stuck: every thread's stack goes to its log (faulthandler, see otbus_core.service)
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


_NO_LEADER_YET = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
}


def _watermarks(c: Any, tp: TopicPartition, timeout: float = 20.0) -> tuple[int, int]:
    """Low and high offsets; a topic created a moment ago may have no leader yet, so retriable errors retry."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lo, hi = c.get_watermark_offsets(tp, timeout=10)
            return lo, hi
        except KafkaException as e:
            err = e.args[0]
            transient = err.retriable() or err.code() in _NO_LEADER_YET
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_topic(bootstrap: str, topic: str, timeout: float = 10.0, committed_only: bool = True) -> list[Any]:
    """Every record of `topic` up to its end offsets at call time."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(topic, timeout=10)
    if topic not in md.topics or md.topics[topic].error is not None:
        return []
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    try:
        parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        ends = {}
        for tp in parts:
            lo, hi = _watermarks(c, tp)
            ends[tp.partition] = hi
            tp.offset = lo
        c.assign(parts)
        out: list[Any] = []
        pending = {p for p, hi in ends.items() if hi > 0}
        pos = {p: 0 for p in ends}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(m.error())
                    continue
                out.append(m)
                pos[m.partition()] = m.offset() + 1
            for p in list(pending):
                # read_committed may end below the high watermark (a trailing transaction marker)
                if pos[p] >= ends[p] or c.position([TopicPartition(topic, p)])[0].offset >= ends[p]:
                    pending.discard(p)
        return out
    finally:
        c.close()


def headers(msg: Any) -> dict[str, str]:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (msg.headers() or [])}


def ignition_events(n: int, start: int = 0, prefix: str = "Line1") -> Iterator[dict[str, Any]]:
    """Tag events exactly as the seed's Event Streams script handler builds them."""
    now_ms = int(time.time() * 1000)
    for i in range(start, start + n):
        yield {
            "tagPath": f"[default]{prefix}/Machine{i % 7}/Sensor_{i}",
            "tagProvider": "default",
            "value": i,
            "quality": "GOOD",
            "qualityCode": 192,
            "timestamp": now_ms + i,
            "dataType": "int",
        }


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


def tenant_normalizer(infra: Infra, tenant: str) -> Service:
    """A normalizer (not started) serving only `tenant`, in a consumer group of its own."""
    run = uuid.uuid4().hex[:8]
    env = {
        **infra.env(),
        "OTBUS_METADATA_REFRESH_MS": "1000",
        "OTBUS_TENANTS": tenant,
        "OTBUS_INSTANCE_ID": f"test-{run}",
        "OTBUS_GROUP_ID": f"otbus-normalizer-{run}",
    }
    return Service("normalizer", "otbus_normalizer", env, free_port())


@dataclass
class Stack:
    """The first slice as separate processes: ingest-http, normalizer, event store."""

    infra: Infra
    tenants: list[str]
    keys: dict[str, str]  # tenant -> API key / bearer token
    ingest: Service
    normalizer: Service
    store: Service

    @classmethod
    def build(cls, infra: Infra, n_tenants: int = 2, suffix: str = "") -> Stack:
        tenants = [new_tenant() for _ in range(n_tenants)]
        keys = {t: f"key-{t}-{uuid.uuid4().hex}" for t in tenants}
        by_key = json.dumps({k: t for t, k in keys.items()})
        run = uuid.uuid4().hex[:8]
        # Each stack serves only its own tenants, in its own consumer groups, so stacks of
        # concurrent test sessions (or a benchmark) never take each other's partitions.
        common = {
            **infra.env(),
            "OTBUS_LOG_LEVEL": "INFO",
            "OTBUS_METADATA_REFRESH_MS": "1000",
            "OTBUS_TENANTS": "|".join(tenants),
        }
        ingest = Service("ingest-http", "otbus_ingest_http", {**common, "OTBUS_API_KEYS": by_key}, free_port())
        normalizer = Service(
            "normalizer",
            "otbus_normalizer",
            {
                **common,
                "OTBUS_INSTANCE_ID": f"test-{run}",
                "OTBUS_GROUP_ID": f"otbus-normalizer-{run}",
                "OTBUS_DEFAULT_CONTEXT": json.dumps(
                    {"site": "plant1", "area": "production", "line": "line1", "equipment": "default"}
                ),
            },
            free_port(),
        )
        store = Service(
            "event-store",
            "otbus_event_store",
            {
                **common,
                "OTBUS_API_TOKENS": by_key,
                "OTBUS_INSTANCE_ID": f"test-{run}",
                "OTBUS_GROUP_ID": f"otbus-event-store-{run}",
            },
            free_port(),
        )
        return cls(infra, tenants, keys, ingest, normalizer, store)

    def start(self) -> Stack:
        self.store.start()
        self.normalizer.start()
        self.ingest.start()
        return self

    def stop(self) -> None:
        for s in (self.ingest, self.normalizer, self.store):
            s.stop()

    def post_batch(
        self,
        tenant: str,
        events: list[dict[str, Any]] | str | bytes,
        path: str = "/system/zerobus/ingest/batch",
    ) -> httpx.Response:
        body = events if isinstance(events, str | bytes) else json.dumps(events, allow_nan=True)
        return httpx.post(
            f"{self.ingest.url}{path}",
            content=body,
            headers={"Content-Type": "application/json", "X-API-Key": self.keys[tenant]},
            timeout=60,
        )

    def query(self, tenant: str, path: str = "/api/v1/events", **params: Any) -> httpx.Response:
        return httpx.get(
            f"{self.store.url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.keys[tenant]}"},
            timeout=30,
        )

    def all_events(self, tenant: str, **params: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            q = {"limit": 1000, "order": "asc", **params}
            if cursor:
                q["cursor"] = cursor
            r = self.query(tenant, **q)
            r.raise_for_status()
            body = r.json()
            out.extend(body["events"])
            cursor = body["next_cursor"]
            if not cursor:
                return out

    def stored_count(self, tenant: str) -> int:
        now = time.time()
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        r = self.query(
            tenant,
            "/api/v1/statistics",
            since=time.strftime(fmt, time.gmtime(now - 86400)),
            until=time.strftime(fmt, time.gmtime(now + 86400)),
        )
        r.raise_for_status()
        return int(r.json()["total"])


class SimulatorProcess:
    """One mode of the OT simulator (a real protocol server) as its own process."""

    mode = ""
    marker = b""  # what its log says once it serves

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = ARTIFACTS / f"simulator-{self.mode}-{port}.log"

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        started = self.log.read_bytes().count(self.marker) if self.log.exists() else 0
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "otbus_ot_simulator", self.mode, "--port", str(self.port), *self.args],
                stdout=f,
                stderr=f,
            )
        wait_until(lambda: self.log.read_bytes().count(self.marker) > started, 60, f"the {self.mode} simulator")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class ModbusSimulator(SimulatorProcess):
    mode = "modbus"
    marker = b" on 127.0.0.1:"

    def __init__(self, port: int, *args: str) -> None:
        super().__init__(port, "--tags", "20", "--interval", "0.2", *args)


class OpcUaSimulator(SimulatorProcess):
    mode = "opcua"
    marker = b"OPC-UA on"

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/otbus/simulator"


def topic_records(infra: Infra, topic: str, schema: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every record of `topic` decoded with the Avro `schema` (a schemas/avro name)."""
    return [_CODEC.decode(m.value(), schema) for m in read_topic(infra.kafka_bootstrap, topic, timeout=timeout)]


def tag_record(tenant: str, i: int, source: str = "line-plc", tag: str | None = None) -> dict[str, Any]:
    """A TagRecord as the normalizer writes it; the value's type cycles through the four kinds."""
    from otbus_core.ids import uuid7

    name = tag or f"sensor_{i % 500}"
    kind = i % 4
    value: Any = [float(i) / 4, i, i % 3 == 0, f"state-{i % 7}"][kind]
    now = int(time.time() * 1_000_000)
    return {
        "event_id": uuid7(),
        "tenant": tenant,
        "path": f"plant1/pressing/line4/press1/measurement/{name}",
        "site": "plant1",
        "area": "pressing",
        "line": "line4",
        "equipment": "press1",
        "signal_type": "measurement",
        "tag_name": name,
        "value": value,
        "data_type": ["DOUBLE", "INT64", "BOOLEAN", "STRING"][kind],
        "unit": "bar" if kind == 0 else None,
        "quality": "GOOD",
        "quality_code": 0,
        "source_time": now - 1000,
        "ingest_time": now,
        "source_id": source,
        "protocol": "opcua",
        "source_tag": f"ns=2;s={name}",
        "raw_event_id": uuid7(),
    }


def produce_tag_records(bootstrap: str, records: list[dict[str, Any]]) -> None:
    """Produce TagRecords to their tenants' tags topics (Avro, with the CloudEvents headers), acknowledged."""
    from confluent_kafka import Producer

    from otbus_core.schemas import TAG_RECORD
    from otbus_core.topics import tags_topic

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    failed: list[str] = []

    def done(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    for rec in records:
        topic = tags_topic(rec["tenant"])
        headers = [("ce_id", rec["event_id"]), ("ce_tenant", rec["tenant"]), ("ce_subject", rec["path"])]
        while True:
            try:
                p.produce(topic, _CODEC.encode(TAG_RECORD, rec, topic), rec["path"], headers=headers, on_delivery=done)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0, "records still unacknowledged after 60 s"
    assert not failed, failed[:3]


# -- notify bridge ------------------------------------------------------------------------


def migrate_store(database_url: str) -> None:
    """Apply the event store's migrations (the bridge reads the tables they create)."""
    from otbus_event_store.migrate import ensure_partitions, migrate

    migrate(database_url)
    ensure_partitions(database_url, 2)


def bridge_service(infra: Infra, tokens: dict[str, str], **env: str) -> Service:
    """A notify bridge (not started) with `tokens` (token -> tenant) and extra OTBUS_* settings."""
    return Service(
        "notify-bridge",
        "otbus_notify_bridge",
        {
            **infra.env(),
            "OTBUS_API_TOKENS": json.dumps(tokens),
            "OTBUS_POLL_INTERVAL_S": "2",
            **{f"OTBUS_{k.upper()}": v for k, v in env.items()},
        },
        free_port(),
    )


async def bridge_password() -> str:
    """A credentials provider for the bridge (OTBUS_DATABASE_CREDENTIALS_PROVIDER), as a Lakebase
    token provider would be: the password is whatever OTBUS_TEST_PASSWORD_FILE holds now."""
    return Path(os.environ["OTBUS_TEST_PASSWORD_FILE"]).read_text().strip()


def insert_events(
    database_url: str,
    tenant: str,
    n: int,
    *,
    subject: str = "plant1/area/line/press1/measurement/temp",
    payload: Callable[[int], dict[str, Any]] | None = None,
    per_tx: int = 1,
    pause: float = 0.0,
    type_: str = "otbus.ot.tag.v1",
) -> list[str]:
    """Store `n` events of `tenant` the way the event store does (INSERT into otbus_events, so the
    feed triggers fire), `per_tx` per transaction, pausing `pause` s between transactions.
    Returns their event ids in insertion order."""
    import psycopg
    from psycopg.types.json import Jsonb

    ids: list[str] = []
    make = payload or (lambda i: {"value": i, "unit": "degC", "quality": "GOOD"})
    sql = (
        "INSERT INTO otbus_events"
        ' (event_id, time, tenant, type, source, subject, payload, topic, "partition", "offset")'
        " VALUES (%s, now(), %s, %s, 'test', %s, %s, %s, 0, %s)"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        for start in range(0, n, per_tx):
            rows = []
            for i in range(start, min(n, start + per_tx)):
                eid = str(uuid.uuid4())
                ids.append(eid)
                rows.append((eid, tenant, type_, subject, Jsonb(make(i)), f"{tenant}.ot.tags.v1", i))
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)
            if pause:
                time.sleep(pause)
    return ids


class BridgeClient:
    """A WebSocket client of the notify bridge that collects what it receives in a thread."""

    def __init__(self, url: str, token: str | None, *, max_queue: int | None = 64, read: bool = True) -> None:
        import threading

        from websockets.sync.client import connect

        q = f"?token={token}" if token is not None else ""
        self.ws = connect(
            url.replace("http://", "ws://") + "/ws" + q, max_size=None, max_queue=max_queue, open_timeout=10
        ).__enter__()  # closed by close()
        self.frames: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True) if read else None
        if self._thread is not None:
            self._thread.start()

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for message in self.ws:
                frame = json.loads(message)
                with self._lock:
                    self.frames.append(frame)
                    if frame.get("op") == "events":
                        self.events.extend(frame["events"])
        except ConnectionClosed:
            pass
        finally:
            self.close_reason = self.ws.close_reason or ""
            self.close_code = self.ws.close_code or 1006

    def send(self, msg: dict[str, Any] | str | bytes) -> None:
        self.ws.send(json.dumps(msg) if isinstance(msg, dict) else msg)

    def subscribe(self, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        self.send({"op": "subscribe", **fields})
        return self.wait_frame(lambda f: f.get("op") in ("subscribed", "error"), timeout)

    def wait_frame(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            with self._lock:
                return next((f for f in self.frames if pred(f)), None)

        frame: dict[str, Any] = wait_until(found, timeout, "a frame", interval=0.02)
        return frame

    def wait_events(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.events) >= n or self.close_code is not None, timeout, f"{n} events", 0.02)
        time.sleep(0.3)  # anything beyond n (a duplicate) would arrive now
        with self._lock:
            return list(self.events)

    def wait_closed(self, timeout: float = 10.0) -> tuple[int, str]:
        wait_until(lambda: self.close_code is not None, timeout, "the close", 0.02)
        return self.close_code or 0, self.close_reason or ""

    def close(self) -> None:
        self.ws.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
