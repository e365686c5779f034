"""The core runner against real Kafka: poison isolation, exactly-once outputs, transient retries."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Message, Producer

from otbus_core.codec import AvroCodec
from otbus_core.envelope import Envelope
from otbus_core.exceptions import TransientError
from otbus_core.kafka import admin_client
from otbus_core.records import Outcome, OutRecord
from otbus_core.runner import ConsumerRunner, RunnerConfig
from otbus_core.settings import OtbusSettings
from otbus_core.topics import TopicSpec, dlq_topic, ensure_topics
from tests.support import Infra, headers, read_topic, wait_until

pytestmark = pytest.mark.integration


class Handler:
    """Copies each message to `<tenant>.ot.copies.v1`; raises on 'boom', and once on 'flaky'."""

    def __init__(self, tenant: str) -> None:
        self.out = f"{tenant}.ot.copies.v1"
        self.seen: Counter[bytes] = Counter()
        self.flaked = False

    def handle(self, messages: list[Message]) -> Outcome:
        outputs = []
        for m in messages:
            v = m.value() or b""
            if v == b"boom":
                raise ValueError("this record always breaks the handler")
            if v == b"flaky" and not self.flaked:
                self.flaked = True
                raise TransientError("the database blinked")
            self.seen[v] += 1
            outputs.append(OutRecord(self.out, v, m.key(), []))
        return Outcome(outputs=outputs)


@pytest.fixture
def source(infra: Infra, tenant: str) -> Iterator[str]:
    topic = f"{tenant}.ot.source.v1"
    ensure_topics(admin_client(OtbusSettings(kafka_bootstrap=infra.kafka_bootstrap)), [TopicSpec(topic, 2)])
    yield topic


def _produce(infra: Infra, topic: str, tenant: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": infra.kafka_bootstrap})
    for i, v in enumerate(values):
        env = Envelope.new(source="/test", type="test.v1", tenant=tenant)
        p.produce(topic, v, key=str(i % 2).encode(), headers=env.headers())
    p.flush(10)


def _copies(infra: Infra, handler: Handler, n: int, timeout: float, what: str) -> list[Message]:
    """The handler's output topic once it holds at least `n` records."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: (c := read_topic(infra.kafka_bootstrap, handler.out)) and len(c) >= n and c, timeout, what
    )


@pytest.mark.parametrize("transactional", [True, False])
def test_poison_is_isolated_and_everything_else_arrives_once(
    infra: Infra, tenant: str, source: str, transactional: bool
) -> None:
    values = [f"v{i}".encode() for i in range(300)]
    values[37] = b"boom"
    values[150] = b"flaky"
    _produce(infra, source, tenant, values)
    settings = OtbusSettings(kafka_bootstrap=infra.kafka_bootstrap, metadata_refresh_ms=1000)
    handler = Handler(tenant)
    config = RunnerConfig(
        stage="test-runner",
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        topics=[source],
        transactional=transactional,
        batch_size=50,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    runner = ConsumerRunner(settings, config, handler, AvroCodec())
    th = threading.Thread(target=runner.run)
    th.start()
    try:
        expected = {v for v in values if v != b"boom"}
        wait_until(lambda: set(handler.seen) >= expected, 60, "every good record handled")
        dead = wait_until(lambda: read_topic(infra.kafka_bootstrap, dlq_topic(tenant)), 30, "the dead letter")
        copies = _copies(infra, handler, len(expected), 30, "the copies")
    finally:
        runner.stop()
        th.join(30)
    assert not th.is_alive()
    assert len(dead) == 1
    h = headers(dead[0])
    assert h["otbus_dlq_stage"] == "test-runner" and "always breaks" in h["otbus_dlq_reason"]
    assert AvroCodec().decode(dead[0].value(), "dead_letter")["original_value"] == b"boom"
    got = Counter(m.value() for m in copies)
    assert set(got) == expected
    if transactional:  # consume-transform-produce: each output committed exactly once
        assert max(got.values()) == 1, [v for v, n in got.items() if n > 1][:5]
    assert runner.failing_since is None and runner.last_error is None
    runner.check_ready()  # recovered


def test_a_fenced_transactional_producer_is_replaced_and_nothing_is_lost_or_doubled(
    infra: Infra, tenant: str, source: str
) -> None:
    """Another producer with the runner's transactional id fences it (a fatal error for the
    runner's producer, as a transaction the broker could not end leaves it): the runner
    replaces its producer, consumes the batch again, and every output is committed once."""
    settings = OtbusSettings(kafka_bootstrap=infra.kafka_bootstrap, metadata_refresh_ms=1000)
    handler = Handler(tenant)
    group = f"g-{uuid.uuid4().hex[:8]}"
    config = RunnerConfig(
        stage="test-runner",
        group_id=group,
        topics=[source],
        transactional=True,
        batch_size=50,
        backoff_initial=0.05,
        backoff_max=0.2,
        instance_id="fenced",
    )
    runner = ConsumerRunner(settings, config, handler, AvroCodec())
    th = threading.Thread(target=runner.run)
    th.start()
    try:
        first = [f"a{i}".encode() for i in range(100)]
        _produce(infra, source, tenant, first)
        wait_until(lambda: set(handler.seen) >= set(first), 60, "the first records handled")
        # a zombie (or a restarted twin) takes over the transactional id
        twin = Producer({"bootstrap.servers": infra.kafka_bootstrap, "transactional.id": f"{group}-fenced"})
        twin.init_transactions(30)
        second = [f"b{i}".encode() for i in range(100)]
        _produce(infra, source, tenant, second)
        expected = set(first) | set(second)
        copies = _copies(infra, handler, len(expected), 60, "the copies of both rounds")
    finally:
        runner.stop()
        th.join(30)
    assert not th.is_alive(), "the runner stopped"
    assert runner.producer_renewals == 1
    copies = read_topic(infra.kafka_bootstrap, handler.out)  # again, now that nothing more can come
    got = Counter(m.value() for m in copies)
    assert set(got) == expected
    assert max(got.values()) == 1, [v for v, n in got.items() if n > 1][:5]


class _LeavesItPaused(ConsumerRunner):
    """A runner that, after its first batch, finds its partitions paused by no retry of its own
    (as a pause left over across a lost assignment would leave them)."""

    paused_once = False

    def _process(self, consumer: Any, batch: list[Message]) -> None:
        super()._process(consumer, batch)
        if not self.paused_once:
            self.paused_once = True
            consumer.pause(consumer.assignment())


def test_partitions_left_paused_with_records_waiting_are_resumed(infra: Infra, tenant: str, source: str) -> None:
    settings = OtbusSettings(kafka_bootstrap=infra.kafka_bootstrap, metadata_refresh_ms=1000)
    handler = Handler(tenant)
    config = RunnerConfig(stage="test-runner", group_id=f"g-{uuid.uuid4().hex[:8]}", topics=[source], batch_size=10)
    runner = _LeavesItPaused(settings, config, handler, AvroCodec())
    runner.stall_after = 2.0
    runner.lag_interval = 0.5
    th = threading.Thread(target=runner.run)
    th.start()
    try:
        _produce(infra, source, tenant, [b"first"])
        wait_until(lambda: runner.paused_once, 60, "the first batch")
        values = [f"v{i}".encode() for i in range(50)]
        _produce(infra, source, tenant, values)
        wait_until(lambda: set(handler.seen) >= set(values), 60, "the records after the pause handled")
    finally:
        runner.stop()
        th.join(30)
    assert not th.is_alive()
