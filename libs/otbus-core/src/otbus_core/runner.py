"""The one consumer runner every consuming service uses.

The runner owns Kafka; handlers own meaning. A handler gets a batch of messages and
returns an `Outcome` (records to produce, records to dead-letter). Two modes:

* transactional (consume-transform-produce, exactly once): outputs, dead letters and
  the consumed offsets go into one Kafka transaction; on any failure the transaction
  is aborted and the batch is consumed again from its first offsets.
* sink: the handler makes its effect durable itself (a database commit) before it
  returns; the runner then produces the dead letters, waits for their acks and only
  then commits the offsets. A redelivered batch must therefore be harmless (the sinks
  are idempotent by event id).

Offsets are committed synchronously after every batch, so a rebalance never finds
uncommitted work, and SIGTERM finishes the batch in hand, commits and closes.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from otbus_core.codec import AvroCodec
from otbus_core.dlq import encode_dead_letter
from otbus_core.exceptions import TransientError
from otbus_core.kafka import base_config, position
from otbus_core.metrics import NullSensor, Sensor
from otbus_core.producer import Producer
from otbus_core.records import Outcome
from otbus_core.settings import OtbusSettings

__all__ = ["BatchHandler", "ConsumerRunner", "RunnerConfig"]

log = logging.getLogger(__name__)


class BatchHandler(Protocol):
    def handle(self, messages: list[Message]) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    stage: str
    group_id: str
    topics: Sequence[str]
    transactional: bool = False
    batch_size: int = 5000
    batch_timeout: float = 0.05
    instance_id: str = field(default_factory=socket.gethostname)
    session_timeout_ms: int = 15_000
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    consumer_overrides: dict[str, Any] = field(default_factory=dict)


class ConsumerRunner:
    def __init__(
        self,
        settings: OtbusSettings,
        config: RunnerConfig,
        handler: BatchHandler,
        codec: AvroCodec,
        *,
        sensor: Sensor | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.handler = handler
        self.codec = codec
        self.sensor = sensor or NullSensor()
        self._stop = threading.Event()
        self.last_loop = time.monotonic()
        self.last_commit: float | None = None
        self.failing_since: float | None = None
        self.committed: dict[tuple[str, int], int] = {}
        self.lag_interval = 2.0
        self._lag_at = 0.0
        self._lag_snapshot: list[dict[str, Any]] = []
        txn_id = f"{config.group_id}-{config.instance_id}" if config.transactional else None
        self.producer = Producer(
            settings,
            transactional_id=txn_id,
            sensor=self.sensor,
            **({"linger.ms": 2} if config.transactional else {}),
        )

    # -- lifecycle ----------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def healthy(self, stall_seconds: float = 120.0) -> bool:
        return time.monotonic() - self.last_loop < stall_seconds

    def _consumer_config(self) -> dict[str, Any]:
        c = self.config
        return {
            **base_config(self.settings),
            "group.id": c.group_id,
            "group.instance.id": f"{c.group_id}-{c.instance_id}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": c.session_timeout_ms,
            "topic.metadata.refresh.interval.ms": self.settings.metadata_refresh_ms,
            "fetch.max.bytes": 52_428_800,
            "queued.max.messages.kbytes": 131_072,
            **c.consumer_overrides,
        }

    def run(self) -> None:
        """Consume until `stop()`; then finish the batch in hand, commit and close."""
        consumer = Consumer(self._consumer_config())
        if self.config.transactional:
            self._retrying("init_transactions", lambda: self.producer.raw.init_transactions(30))
        consumer.subscribe(list(self.config.topics), on_revoke=self._on_revoke)
        log.info("%s consuming %s as group %s", self.config.stage, list(self.config.topics), self.config.group_id)
        try:
            while not self._stop.is_set():
                self.last_loop = time.monotonic()
                msgs = consumer.consume(self.config.batch_size, self.config.batch_timeout)
                batch = [m for m in msgs if not self._is_error(m)]
                if batch:
                    self._process(consumer, batch)
                self._refresh_lag(consumer)
        finally:
            log.info("%s stopping: closing consumer", self.config.stage)
            consumer.close()
            self.producer.close()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.committed.pop((tp.topic, tp.partition), None)

    @staticmethod
    def _is_error(msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        if err.fatal():
            raise KafkaException(err)
        log.warning("consumer error: %s", err)
        return True

    # -- one batch ----------------------------------------------------------------

    def _process(self, consumer: Consumer, batch: list[Message]) -> None:
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                if self.config.transactional:
                    self._process_transactional(consumer, batch)
                else:
                    self._process_sink(consumer, batch)
                self.failing_since = None
                self.last_commit = time.monotonic()
                self.sensor.on_batch(len(batch), time.perf_counter() - started)
                return
            except (TransientError, KafkaException) as e:
                if isinstance(e, KafkaException) and e.args and e.args[0].fatal():
                    raise
                kind = "transient"
            except Exception:
                log.exception("%s handler failed on a batch of %d; retrying", self.config.stage, len(batch))
                kind = "handler"
            # The batch did not go through: rewind to its first offsets and try again.
            attempt += 1
            self.sensor.on_retry(kind)
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            delay = min(self.config.backoff_max, self.config.backoff_initial * 2 ** min(attempt, 10))
            delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
            log.warning(
                "%s batch of %d failed (%s, attempt %d); retrying in %.2fs",
                self.config.stage,
                len(batch),
                kind,
                attempt,
                delay,
            )
            if self._stop.wait(delay):
                self._rewind(consumer, batch)
                return
            self.last_loop = time.monotonic()

    def _process_transactional(self, consumer: Consumer, batch: list[Message]) -> None:
        p = self.producer
        p.raw.begin_transaction()
        try:
            outcome = self.handler.handle(batch)
            self._produce_outcome(outcome)
            offsets = _next_offsets(batch)
            p.raw.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
            self._commit_transaction()
        except BaseException as e:
            self._abort(e)
            raise
        self._record_commit(batch)

    def _commit_transaction(self) -> None:
        while True:
            try:
                self.producer.raw.commit_transaction(30)
                return
            except KafkaException as e:
                err = e.args[0]
                if err.retriable() and not err.txn_requires_abort():
                    log.warning("commit_transaction retriable error: %s; retrying", err)
                    continue
                raise

    def _abort(self, cause: BaseException) -> None:
        try:
            self.producer.raw.abort_transaction(30)
        except KafkaException as e:
            if e.args[0].fatal():
                raise
            log.warning("abort_transaction failed: %s", e)

    def _process_sink(self, consumer: Consumer, batch: list[Message]) -> None:
        outcome = self.handler.handle(batch)
        failed_before = self.producer.failed
        self._produce_outcome(outcome)
        if (outcome.outputs or outcome.dead) and (self.producer.flush(30) or self.producer.failed != failed_before):
            raise TransientError("dead letters or outputs were not acknowledged")
        offsets = _next_offsets(batch)
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            # A rebalance took the partitions: the new owner gets the batch again, and
            # the sink is idempotent, so this is safe; anything else is retried.
            code = e.args[0].code()
            if code in (
                KafkaError.REBALANCE_IN_PROGRESS,
                KafkaError.ILLEGAL_GENERATION,
                KafkaError.UNKNOWN_MEMBER_ID,
            ):
                log.warning("commit lost to a rebalance (%s); batch will be redelivered", e.args[0])
                return
            raise
        self._record_commit(batch)

    def _produce_outcome(self, outcome: Outcome) -> None:
        p = self.producer
        for r in outcome.outputs:
            p.produce(r.topic, r.value, r.key, r.headers)
        for d in outcome.dead:
            r = encode_dead_letter(self.codec, d)
            p.produce(r.topic, r.value, r.key, r.headers)
        if outcome.dead:
            first = outcome.dead[0]
            log.warning(
                "%d dead letter(s) in this batch; first from %s[%s]@%s: %s",
                len(outcome.dead),
                first.original_topic,
                first.original_partition,
                first.original_offset,
                first.reason,
            )
            self.sensor.on_dead_letter(len(outcome.dead))
        self.sensor.on_produced(len(outcome.outputs) + len(outcome.dead))

    def _record_commit(self, batch: list[Message]) -> None:
        for tp in _next_offsets(batch):
            self.committed[(tp.topic, tp.partition)] = tp.offset
        self.sensor.on_commit(len(self.committed))

    @staticmethod
    def _rewind(consumer: Consumer, batch: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for m in batch:
            topic, part, off = position(m)
            if off < first.get((topic, part), off + 1):
                first[(topic, part)] = off
        for (topic, part), off in first.items():
            try:
                consumer.seek(TopicPartition(topic, part, off))
            except KafkaException as e:  # partition no longer ours: its new owner starts from the commit
                log.info("seek %s[%d]@%d skipped: %s", topic, part, off, e)

    def _retrying(self, what: str, fn: Callable[[], object]) -> None:
        delay = self.config.backoff_initial
        while not self._stop.is_set():
            try:
                fn()
                return
            except KafkaException as e:
                if e.args[0].fatal():
                    raise
                log.warning("%s failed: %s; retrying in %.1fs", what, e, delay)
                self._stop.wait(delay)
                delay = min(self.config.backoff_max, delay * 2)

    # -- status ---------------------------------------------------------------

    def lag(self) -> list[dict[str, Any]]:
        """Per assigned partition: committed offset, high watermark and lag.

        A snapshot the consuming thread refreshes every few seconds; librdkafka's consumer
        must not be called from other threads while it sits in consume().
        """
        return list(self._lag_snapshot)

    def _refresh_lag(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now - self._lag_at < self.lag_interval:
            return
        self._lag_at = now
        out: list[dict[str, Any]] = []
        total = 0
        # position skips transaction markers, which the committed offset may stop short of
        for tp in consumer.position(consumer.assignment()):
            try:
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high < 0:  # nothing fetched yet for this partition
                continue
            committed = self.committed.get((tp.topic, tp.partition))
            done = max(committed or 0, tp.offset)
            lag = max(0, high - done) if committed is not None or tp.offset >= 0 else None
            total += lag or 0
            out.append({"topic": tp.topic, "partition": tp.partition, "committed": committed, "high": high, "lag": lag})
        self._lag_snapshot = out
        self.sensor.on_lag(total)


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for m in batch:
        topic, part, off = position(m)
        if off > last.get((topic, part), -1):
            last[(topic, part)] = off
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
