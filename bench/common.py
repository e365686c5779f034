"""Shared benchmark helpers: infrastructure, service processes, Kafka, PostgreSQL, data, the report.

Isolation from whatever else runs on the same Kafka (the tests, the demo):

* every benchmark uses fresh tenants named `bench-<hex>` and fresh consumer groups;
* the normalizer and the event store subscribe by pattern to the tenants' topics, and a fresh
  group starts at the earliest offset; each service is given `OTBUS_TENANTS=<the benchmark's
  tenants>` so its pattern matches only the benchmark's topics (no older topic of a test
  tenant is read, and nothing belonging to anyone else is deleted). `group_assigned` also
  records every topic the group was given, and the benchmarks report any foreign one;
* at the end, the `bench-*` topics, consumer groups and rows are removed (`cleanup`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, Message, TopicPartition
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import AdminClient

from otbus_core.producer import PRODUCER_DEFAULTS
from otbus_core.records import OutRecord
from otbus_core.topics import ensure_topics, tenant_topics

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
LOGS = OUT / "logs"
INFRA_SH = REPO / "deploy" / "local" / "infra.sh"
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0", "false", "no")
BENCH_TOPIC = re.compile(r"^bench-[0-9a-f]{10}\.ot\.")
BENCH_GROUP = re.compile(r"^bench-")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- infrastructure -------------------------------------------------------------------------


@dataclass(frozen=True)
class Infra:
    kafka: str
    database_url: str
    admin_url: str

    def env(self) -> dict[str, str]:
        return {"OTBUS_KAFKA_BOOTSTRAP": self.kafka, "OTBUS_DATABASE_URL": self.database_url}


def infra(start: bool = True) -> Infra:
    """Kafka and PostgreSQL from deploy/local/infra.sh (started or reused); OTBUS_* env wins."""
    if start and "OTBUS_KAFKA_BOOTSTRAP" not in os.environ:
        proc = subprocess.run(
            ["bash", str(INFRA_SH), "start", "kafka", "postgres"], text=True, capture_output=True, timeout=900
        )
        if proc.returncode != 0:
            raise RuntimeError(f"infra.sh start failed:\n{proc.stdout}\n{proc.stderr}")
    env: dict[str, str] = {}
    out = subprocess.run(["bash", str(INFRA_SH), "env"], text=True, capture_output=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export ") :].partition("=")
            env[k] = v.strip("'\"")
    env.update({k: v for k, v in os.environ.items() if k.startswith("OTBUS_")})
    return Infra(
        kafka=env["OTBUS_KAFKA_BOOTSTRAP"],
        database_url=env["OTBUS_DATABASE_URL"],
        admin_url=env.get("OTBUS_DATABASE_ADMIN_URL", env["OTBUS_DATABASE_URL"]),
    )


def new_tenant() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}"


def run_id() -> str:
    return uuid.uuid4().hex[:8]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# -- processes --------------------------------------------------------------------------------

_LIVE: list[Service] = []


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    """A process started by the benchmark (a service as in production, or a baseline)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    ready_path: str | None = "/readyz"
    proc: subprocess.Popen[bytes] | None = None
    profiler: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{self.name}.log"

    @classmethod
    def module(cls, name: str, module: str, env: dict[str, str], port: int) -> Service:
        """An otbus service; BENCH_SERVICE_ENV (JSON) adds settings to every one, for experiments."""
        base = {"OTBUS_PORT": str(port), "OTBUS_HOST": "127.0.0.1", "OTBUS_LOG_JSON": "false"}
        extra = json.loads(os.environ.get("BENCH_SERVICE_ENV") or "{}")
        return cls(name, [sys.executable, "-m", module], {**base, **env, **extra}, port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, ready_timeout: float = 60.0) -> Service:
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONPATH", str(REPO))
        with self.log_path.open("ab") as f:
            f.write(f"\n==== {time.strftime('%F %T')} {' '.join(self.argv)}\n".encode())
            f.flush()
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                cwd=REPO,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        _LIVE.append(self)
        self._profile()
        if self.ready_path is not None and self.port is not None:
            try:
                wait_until(self._ready, ready_timeout, f"{self.name} {self.ready_path}", 0.1)
            except BaseException:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"{self.name} did not become ready; log tail:\n{tail}") from None
        return self

    def _profile(self) -> None:
        """BENCH_PYSPY=1: sample the process with py-spy (collapsed stacks, with native frames
        and idle time) into bench/out/profile-<name>-<pid>.txt, until it exits."""
        if not os.environ.get("BENCH_PYSPY") or self.proc is None:
            return
        out = LOGS.parent / f"profile-{self.name}-{self.proc.pid}.txt"
        argv = ["py-spy", "record", "--pid", str(self.proc.pid), "-f", "raw", "-o", str(out), "--idle", "-r", "200"]
        try:
            self.profiler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as e:
            log(f"py-spy could not start ({e}); BENCH_PYSPY needs py-spy on PATH (uv tool install py-spy)")

    def _ready(self) -> bool:
        self.check_alive()
        status, _ = http_get(f"{self.url}{self.ready_path}")
        return status == 200

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.proc.pid}) ignored SIGTERM for {timeout:.0f}s: killing it")
                self.proc.kill()
                self.proc.wait(10)
        if self.profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.profiler.wait(15)
        if self in _LIVE:
            _LIVE.remove(self)
        return self.proc.returncode

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all() -> None:
    """Stop every process this benchmark started that is still running."""
    for s in list(reversed(_LIVE)):
        try:
            s.stop()
        except Exception as e:
            log(f"stopping {s.name} failed: {e}")


def terminate_on_signals() -> None:
    """SIGTERM/SIGHUP raise SystemExit, so `finally` blocks stop the services."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A tiny GET (no client library, no proxy settings): status and body; (0, b"") when unreachable."""
    m = re.match(r"http://([^/:]+):(\d+)(/.*)?$", url)
    if not m:
        raise ValueError(url)
    host, port, path = m.group(1), int(m.group(2)), m.group(3) or "/"
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return 0, b""


def metrics(url: str) -> dict[str, float]:
    """Prometheus text from `url`/metrics as {'name{labels}': value}."""
    status, body = http_get(f"{url}/metrics", timeout=5)
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[k] = float(v)
    return out


# -- Kafka ---------------------------------------------------------------------------------------


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_tenant_topics(bootstrap: str, *tenants: str, partitions: int = 3) -> None:
    specs = [s for t in tenants for s in tenant_topics(t, ("http",), partitions=partitions)]
    ensure_topics(admin(bootstrap), specs)
    wait_until(
        lambda: all(s.name in admin(bootstrap).list_topics(timeout=5).topics for s in specs),
        30,
        "topics to exist",
    )


def _partitions(adm: AdminClient, topics: Iterable[str]) -> dict[str, int]:
    md = adm.list_topics(timeout=10)
    return {t: len(md.topics[t].partitions) for t in topics if t in md.topics}


ASSIGNED: dict[str, set[str]] = {}
"""group -> every topic it was seen assigned (to report topics outside the benchmark)."""


def group_assigned(adm: AdminClient, group: str, topic: str, partitions: int) -> bool:
    """True once `group` is stable and has all partitions of `topic` assigned."""
    try:
        desc = adm.describe_consumer_groups([group], request_timeout=5)[group].result()
    except Exception:
        return False
    if desc.state.name != "STABLE":
        return False
    tps = [tp for m in desc.members for tp in (m.assignment.topic_partitions or [])]
    ASSIGNED.setdefault(group, set()).update(tp.topic for tp in tps)
    return len({tp.partition for tp in tps if tp.topic == topic}) == partitions


def foreign_topics(group: str) -> list[str]:
    """Topics `group` was assigned that are not benchmark topics."""
    return sorted(t for t in ASSIGNED.get(group, ()) if not BENCH_TOPIC.match(t))


def group_offsets(adm: AdminClient, group: str, topic: str, partitions: int) -> list[int]:
    """`group`'s committed offset on each partition of `topic` (0 where none)."""
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    try:
        res = adm.list_consumer_group_offsets([req], request_timeout=5)[group].result()
    except Exception:
        return [0] * partitions
    out = [0] * partitions
    for tp in res.topic_partitions:
        out[tp.partition] = max(0, tp.offset)
    return out


def committed_offsets(adm: AdminClient, group: str, topic: str, partitions: int) -> int:
    """Sum of `group`'s committed offsets on `topic` (0 where none)."""
    return sum(group_offsets(adm, group, topic, partitions))


class CaughtUp:
    """Whether a consumer group has consumed everything committed in a topic, from Kafka alone.

    The end of a partition is its last stable offset (a read_committed query). When the topic
    is written in transactions, the offset before it is the last transaction's commit marker,
    which a consumer skips without committing past it: `slack=1` then.
    """

    def __init__(self, bootstrap: str, topic: str, slack: int = 0) -> None:
        self.topic, self.slack = topic, slack
        self.adm = admin(bootstrap)
        self.partitions = _partitions(self.adm, [topic])[topic]
        self._c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-watermarks-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
            }
        )

    def ends(self) -> list[int]:
        return [
            self._c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5, cached=False)[1]
            for p in range(self.partitions)
        ]

    def __call__(self, group: str) -> bool:
        ends = self.ends()
        done = group_offsets(self.adm, group, self.topic, self.partitions)
        return all(end <= 0 or got >= end - self.slack for got, end in zip(done, ends, strict=True))

    def close(self) -> None:
        self._c.close()


@dataclass
class Drained:
    """When a service draining a preloaded topic started, got its partitions, and was done."""

    started: float
    t0: float
    t1: float
    cpu: dict[str, float]


def drain_timed(
    inf: Infra,
    svc: Service,
    group: str,
    topic: str,
    progress: Callable[[], str],
    done: Callable[[], bool] = lambda: True,
    timeout: float = 300.0,
) -> Drained:
    """Start `svc` and time it from its group's assignment of `topic` until its committed offsets
    reach the topic's end and `done()` agrees; CPU is metered over that window. The service is
    left running. `progress()` says how far it got, for the timeout's message."""
    adm = admin(inf.kafka)
    caught_up = CaughtUp(inf.kafka, topic)
    started = time.monotonic()
    svc.start()
    try:
        t0: float | None = None
        meter: CpuMeter | None = None
        while True:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{svc.name}: {progress()} after {timeout:.0f}s")
            svc.check_alive()
            if t0 is None:
                if group_assigned(adm, group, topic, caught_up.partitions):
                    t0 = time.monotonic()
                    meter = CpuMeter(service=svc.pid)
            elif caught_up(group):
                seen = time.monotonic()
                if done():
                    return Drained(started, t0, seen, meter.read() if meter else {})
            time.sleep(0.05)
    finally:
        caught_up.close()


class CommittedCounter:
    """Counts the committed records of a topic (read_committed), from its start, as they come."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.count = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-counter-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 20,
                "enable.partition.eof": False,
            }
        )
        n = _partitions(admin(bootstrap), [topic])[topic]
        self._c.assign([TopicPartition(topic, p, 0) for p in range(n)])  # 0 = OFFSET_BEGINNING here

    def poll(self, timeout: float) -> int:
        msgs = self._c.consume(10_000, timeout)
        got = 0
        for m in msgs:
            err = m.error()
            if err is None:
                got += 1
            elif err.code() != KafkaError._PARTITION_EOF:
                raise RuntimeError(err)
        if got:
            now = time.monotonic()
            self.first_at = self.first_at or now
            self.last_at = now
            self.count += got
        return got

    def close(self) -> None:
        self._c.close()


def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 120.0) -> list[Message]:
    """`expect` committed records of `topic` (read_committed), in no particular order."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        n = _partitions(admin(bootstrap), [topic])[topic]
        c.assign([TopicPartition(topic, p, 0) for p in range(n)])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(out) < expect:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} of {expect} records of {topic}")
            for m in c.consume(10_000, 0.5):
                if m.error() is None:
                    out.append(m)
        return out
    finally:
        c.close()


def produce_all(bootstrap: str, records: Sequence[OutRecord]) -> float:
    """Produce with the services' producer settings (idempotent, acks=all); seconds taken."""
    conf = {**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap}
    p = KafkaProducer(conf)
    failed: list[Any] = []

    def cb(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    t0 = time.perf_counter()
    for r in records:
        while True:
            try:
                p.produce(r.topic, r.value, r.key, headers=list(r.headers), on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(120)
    if left or failed:
        raise RuntimeError(f"preload: {left} undelivered, {len(failed)} failed ({failed[:1]})")
    return time.perf_counter() - t0


# -- data ------------------------------------------------------------------------------------------


def ignition_events(
    n: int, start: int = 0, prefix: str = "Line1", now_ms: int | None = None, tags: int = 10_000
) -> list[dict[str, Any]]:
    """Tag events as the seed's Ignition Event Streams handler posts them.

    Event `i` is a reading of tag `i % tags` (a plant has a bounded set of tags that report
    again and again); a tag keeps its data type: 60% float, 20% int, 10% bool, 10% string.
    """
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    out = []
    for i in range(start, start + n):
        t = i % tags
        kind = t % 10
        if kind < 6:
            value: Any = round(20.0 + (i % 997) * 0.173, 3)
            dtype, name = "float", f"Temp_{t}"
        elif kind < 8:
            value, dtype, name = i, "int", f"Count_{t}"
        elif kind == 8:
            value, dtype, name = bool(i % 3), "bool", f"Running_{t}"
        else:
            value, dtype, name = f"state-{i % 5}", "str", f"Status_{t}"
        out.append(
            {
                "tagPath": f"[default]{prefix}/Machine{t % 7}/{name}",
                "tagProvider": "default",
                "value": value,
                "quality": "GOOD",
                "qualityCode": 192,
                "timestamp": now_ms - 1000 + (i % 1000),
                "dataType": dtype,
            }
        )
    return out


def raw_records(tenant: str, n: int, per_record: int = 1000, sources: int = 8) -> list[OutRecord]:
    """`n` readings as ingest-http publishes them (its RawPublisher), `per_record` per Kafka record."""
    import msgspec

    from otbus_core.codec import AvroCodec
    from otbus_ingest_http.publish import RawPublisher
    from otbus_ingest_http.validation import EventValidator

    validator = EventValidator(1024, 16384, 1_000_000)
    publisher = RawPublisher(AvroCodec(), per_record, {})
    out: list[OutRecord] = []
    for k, start in enumerate(range(0, n, per_record)):
        body = msgspec.json.encode(ignition_events(min(per_record, n - start), start))
        events, rejects = validator.decode_batch(body)
        assert not rejects
        out += publisher.records(tenant, f"plc-{k % sources}", events, f"bench-{k}")
    return out


def tag_records(tenant: str, n: int, per_record: int = 1000) -> list[OutRecord]:
    """`n` tag records exactly as the normalizer makes them (its handler, in this process)."""
    from otbus_core.codec import AvroCodec
    from otbus_normalizer.config import NormalizerSettings
    from otbus_normalizer.handler import NormalizerHandler
    from otbus_normalizer.mapping import PathTemplate, TagMapper

    s = NormalizerSettings()
    handler = NormalizerHandler(AvroCodec(), TagMapper(PathTemplate(s.path_template), s.default_context, {}))
    out: list[OutRecord] = []
    for i, r in enumerate(raw_records(tenant, n, per_record)):
        key = r.key.encode() if isinstance(r.key, str) else r.key
        msg = Message(topic=r.topic, partition=0, offset=i, key=key, value=r.value, headers=list(r.headers))
        outcome = handler.handle([msg])
        assert not outcome.dead, outcome.dead[:1]
        out += outcome.outputs
    return out


# -- PostgreSQL ------------------------------------------------------------------------------------


def count_rows(conn: psycopg.Connection[Any], tenant: str) -> int:
    row = conn.execute("SELECT count(*) FROM otbus_events WHERE tenant = %s", (tenant,)).fetchone()
    return int(row[0]) if row else 0


# -- cleanup ---------------------------------------------------------------------------------------


KEEP = os.environ.get("BENCH_KEEP", "") not in ("", "0")


def delete_topics(inf: Infra, tenants: Iterable[str] | None = None) -> None:
    """Delete the topics of `tenants` (all `bench-*` topics when None), unless BENCH_KEEP is set.

    Done as soon as a benchmark ends, so that no other consumer on this Kafka that
    subscribes to every tenant keeps working on them during the next benchmark.
    """
    adm = admin(inf.kafka)
    names = set(tenants) if tenants is not None else None
    topics = [
        t
        for t in adm.list_topics(timeout=10).topics
        if BENCH_TOPIC.match(t) and (names is None or t.split(".", 1)[0] in names)
    ]
    if names is not None:
        for group, seen in foreign_consumers(adm, set(topics)).items():
            FOREIGN_CONSUMERS.setdefault(group, []).extend(seen)
            log(f"WARNING: consumer group {group!r} (not the benchmark's) was consuming {seen}")
    if KEEP and tenants is not None:
        return
    if topics:
        for t, fut in adm.delete_topics(topics, operation_timeout=60).items():
            try:
                fut.result()
            except Exception as e:
                log(f"delete topic {t}: {e}")


FOREIGN_CONSUMERS: dict[str, list[str]] = {}
"""Groups outside the benchmark seen consuming its topics (they compete for the CPU)."""


def foreign_consumers(adm: AdminClient, topics: set[str]) -> dict[str, list[str]]:
    """Consumer groups not named `bench-*` that have any of `topics` assigned right now."""
    if not topics:
        return {}
    try:
        groups = [g.group_id for g in adm.list_consumer_groups(request_timeout=10).result().valid]
        groups = [g for g in groups if not BENCH_GROUP.match(g)]
        if not groups:
            return {}
        out: dict[str, list[str]] = {}
        for g, fut in adm.describe_consumer_groups(groups, request_timeout=10).items():
            try:
                desc = fut.result()
            except Exception as e:  # a group that went away meanwhile
                log(f"describe group {g}: {e}")
                continue
            seen = {tp.topic for m in desc.members for tp in (m.assignment.topic_partitions or [])} & topics
            if seen:
                out[g] = sorted(seen)
        return out
    except Exception as e:
        log(f"could not look for other consumers: {e}")
        return {}


def cleanup(inf: Infra) -> dict[str, int]:
    """Delete every `bench-*` topic, consumer group, row and `bench_copy_*` table; rows deleted by tenant."""
    delete_topics(inf)
    adm = admin(inf.kafka)
    with contextlib.suppress(Exception):
        groups = [g.group_id for g in adm.list_consumer_groups(request_timeout=10).result().valid]
        groups = [g for g in groups if BENCH_GROUP.match(g)]
        if groups:
            for fut in adm.delete_consumer_groups(groups, request_timeout=30).values():
                with contextlib.suppress(Exception):
                    fut.result()
    by_tenant: dict[str, int] = {}
    with psycopg.connect(inf.admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('otbus_events') IS NOT NULL").fetchone()
        if exists and exists[0]:
            rows = conn.execute(
                "SELECT tenant, count(*) FROM otbus_events WHERE tenant LIKE 'bench-%' GROUP BY tenant"
            ).fetchall()
            by_tenant = {t: int(n) for t, n in rows}
            if by_tenant:
                conn.execute("DELETE FROM otbus_events WHERE tenant LIKE 'bench-%'")
                conn.execute("VACUUM otbus_events")  # so the next run does not insert into bloated indexes
                log(f"deleted {sum(by_tenant.values())} benchmark rows from otbus_events: {by_tenant}")
        for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'bench\\_copy\\_%'"
        ).fetchall():
            conn.execute(f'DROP TABLE IF EXISTS "{name}"')
    return by_tenant


# -- numbers and the report ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), nearest rank."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


@dataclass
class Entry:
    name: str
    unit: str
    value: float | None
    baseline: float | None
    target: str
    met: bool | None
    p50_ms: float | None = None
    p99_ms: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        r = self.ratio
        return {
            "name": self.name,
            "unit": self.unit,
            "value": _round(self.value),
            "baseline": _round(self.baseline),
            "ratio": round(r, 3) if r is not None else None,
            "target": self.target,
            "met": self.met,
            "p50_ms": _round(self.p50_ms),
            "p99_ms": _round(self.p99_ms),
            "details": self.details,
        }


def _round(v: float | None) -> float | None:
    if v is None:
        return None
    return round(v, 1) if abs(v) >= 100 else round(v, 2)


def failed_entry(name: str, unit: str, target: str, error: BaseException) -> Entry:
    return Entry(name, unit, None, None, target, False, details={"error": f"{type(error).__name__}: {error}"})


def write_report(entries: Sequence[Entry], path: Path = OUT / "report.json") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([e.as_dict() for e in entries], indent=2) + "\n")
    return path


def table(entries: Sequence[Entry]) -> str:
    def fmt(v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"

    rows = [("benchmark", "value", "unit", "baseline", "ratio", "p50 ms", "p99 ms", "met", "target")]
    for e in entries:
        r = e.ratio
        rows.append(
            (
                e.name,
                fmt(e.value),
                e.unit,
                fmt(e.baseline),
                f"{r:.3f}" if r is not None else "-",
                fmt(e.p50_ms),
                fmt(e.p99_ms),
                {True: "yes", False: "NO", None: "-"}[e.met],
                e.target,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for k, row in enumerate(rows):
        cells = [c.rjust(w) if 0 < i < 8 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join([*cells, row[-1]]))
        if k == 0:
            lines.append("-" * len(lines[0]))
    errors = [f"  {e.name}: {e.details['error']}" for e in entries if "error" in e.details]
    disturbed = [
        f"  {e.name}: other processes used up to {e.details['other_cpu_cores_max']} cores while it ran"
        for e in entries
        if e.details.get("disturbed")
    ]
    notes = ["", "disturbed (figures low and noisy):", *disturbed] if disturbed else []
    return "\n".join(lines + (["", "errors:", *errors] if errors else []) + notes)


def mark_disturbed(entry: Entry, limit: float = 0.25) -> None:
    """Record the most CPU other processes took during any measured window of `entry`."""

    def walk(d: Any) -> Iterator[float]:
        if isinstance(d, dict):
            if "other" in d and "machine_busy" in d:
                yield float(d["other"])
            for v in d.values():
                yield from walk(v)

    worst = max(walk(entry.details), default=None)
    if worst is not None:
        entry.details["other_cpu_cores_max"] = worst
        if worst > limit:
            entry.details["disturbed"] = True


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "quick": QUICK}
    if os.environ.get("BENCH_SERVICE_ENV"):
        info["service_env"] = json.loads(os.environ["BENCH_SERVICE_ENV"])
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - t0:.1f}s")


# -- CPU accounting --------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _kafka_pid() -> int | None:
    pidfile = REPO / ".otbus" / "kafka" / "kafka.pid"
    with contextlib.suppress(OSError, ValueError):
        return int(pidfile.read_text().strip())
    return None


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot."""
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / _TICK, sum(vals) / _TICK


def _snapshot() -> dict[int, tuple[float, int, str]]:
    """pid -> (CPU seconds, parent pid, command name) for every process."""
    out: dict[int, tuple[float, int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[int(d.name)] = ((int(fields[11]) + int(fields[12])) / _TICK, int(fields[1]), comm)
    return out


class CpuMeter:
    """Average cores used over a window by: the given processes, Kafka, PostgreSQL, the benchmark's
    own other processes (runner, load generator), everything else (`other`: a test suite running
    meanwhile, for instance; above ~0.2 the figures are disturbed) and the whole machine."""

    def __init__(self, **named: int | None) -> None:
        self.named = {k: v for k, v in named.items() if v}
        kafka = _kafka_pid()
        if kafka:
            self.named.setdefault("kafka", kafka)
        self.t0 = time.monotonic()
        self.snap0 = _snapshot()
        self.machine0 = _machine_busy()

    def read(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self.t0)
        snap = _snapshot()
        by_pid = {p: k for k, p in self.named.items()}
        me = os.getpid()
        sums = dict.fromkeys([*self.named, "postgres", "bench", "other"], 0.0)
        for pid, (cpu, ppid, comm) in snap.items():
            delta = cpu - self.snap0[pid][0] if pid in self.snap0 else cpu
            if pid in by_pid:
                sums[by_pid[pid]] += delta
            elif comm == "postgres":
                sums["postgres"] += delta
            elif pid == 2 or ppid == 2:
                continue  # kernel threads (loopback networking, disk I/O of everyone)
            else:
                anc, seen = pid, 0
                while anc not in (0, 1, me) and seen < 64:
                    anc, seen = snap[anc][1] if anc in snap else 0, seen + 1
                sums["bench" if anc == me else "other"] += delta
        out = {k: round(v / wall, 2) for k, v in sums.items()}
        busy, total = _machine_busy()
        cores = os.cpu_count() or 1
        out["machine_busy"] = round((busy - self.machine0[0]) / max(1e-9, total - self.machine0[1]) * cores, 2)
        return out


def peak_rss_mb(pid: int | None) -> float | None:
    """Peak resident memory (VmHWM) of a running process, MiB."""
    if not pid:
        return None
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def run_alone(name: str, run: Callable[[Infra], list[Entry]]) -> None:
    """What `python -m bench.bench_<name>` does: run one benchmark, write its report, print it."""
    entries = run(infra())
    write_report(entries, OUT / f"{name}.json")
    print(table(entries))
