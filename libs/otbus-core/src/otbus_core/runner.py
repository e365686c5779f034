"""The one consumer runner every consuming service uses.

The runner owns Kafka; handlers own meaning. A handler gets a batch of messages and
returns an `Outcome` (records to produce, records to dead-letter). Two modes:

* transactional (consume-transform-produce, exactly once): outputs, dead letters and
  the consumed offsets go into one Kafka transaction; on any failure the transaction
  is aborted and the batch is consumed again from its first offsets. When the transaction
  cannot be ended (a fatal producer error, or a commit whose outcome is unknown) the
  producer is replaced and the partitions go back to their committed offsets.
* sink: the handler makes its effect durable itself (a database commit) before it
  returns; the runner then produces the dead letters, waits for their acks and only
  then commits the offsets. A redelivered batch must therefore be harmless (the sinks
  are idempotent by event id).

A batch that fails is not held in memory and retried in place: its partitions are
rewound to the batch's first offsets and paused for a backoff (with jitter), and the
consumer keeps polling, so it stays in its group and other partitions keep moving.
Failures are sorted: transient ones (broker or database away) are retried for as
long as it takes; anything else is retried a few times and then the batch is taken
apart message by message, and the message that fails goes to the DLQ with the error
as its reason, so one poison record never stops a partition.

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

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from otbus_core.codec import AvroCodec
from otbus_core.dlq import dead_letter_from_message, encode_dead_letter
from otbus_core.exceptions import FatalError, TransientError
from otbus_core.kafka import admin_client, base_config, position
from otbus_core.metrics import NullSensor, Sensor
from otbus_core.producer import Producer
from otbus_core.records import Outcome, OutRecord
from otbus_core.settings import OtbusSettings
from otbus_core.topics import TopicProvisioner

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
    linger: float = 0.0
    """After the first record, keep collecting this long (seconds) unless the batch is full first.
    0 takes only what is already there, which suits sinks whose cost per batch is small."""
    instance_id: str = field(default_factory=socket.gethostname)
    session_timeout_ms: int = 15_000
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    isolate_after: int = 3
    """Failed attempts (not transient) after which a batch is processed message by message."""
    unready_after: float = 30.0
    """Seconds of failing batches after which the runner reports itself not ready."""
    consumer_overrides: dict[str, Any] = field(default_factory=dict)


class _Retry(Exception):
    """A batch (or the rest of one) is to be consumed again after a backoff."""


class _Stuck(FatalError):
    """A librdkafka call did not return long after its own timeout (see `_bounded`)."""


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
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.committed: dict[tuple[str, int], int] = {}
        self.lag_interval = 2.0
        self._lag_at = 0.0
        self._lag_snapshot: list[dict[str, Any]] = []
        self.stall_after = 30.0
        """Seconds without a record and no retry pending after which the runner asks the broker whether
        records are waiting; if so it says what it knows and resumes every assigned partition."""
        self._record_at = time.monotonic()
        self._stall_checked = 0.0
        self._stall_every = self.stall_after
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._paused: list[TopicPartition] = []
        self._resume_at = 0.0
        self._txn_id = f"{config.group_id}-{config.instance_id}" if config.transactional else None
        self.producer = self._new_producer()
        self.producer_renewals = 0
        self._renewed_at = -float("inf")
        self.topics = TopicProvisioner(
            admin_client(settings),
            partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
            retention_ms=settings.topic_retention_ms,
        )

    def _new_producer(self) -> Producer:
        return Producer(
            self.settings,
            transactional_id=self._txn_id,
            sensor=self.sensor,
            **{"delivery.report.only.error": True, **({"linger.ms": 2} if self._txn_id else {})},
        )

    # -- lifecycle ----------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def healthy(self, stall_seconds: float = 120.0) -> bool:
        """The consuming thread is alive and looping (a stuck loop is what a restart cures)."""
        return time.monotonic() - self.last_loop < stall_seconds

    def check_ready(self) -> None:
        """Raise while batches have been failing for longer than `unready_after` seconds."""
        since = self.failing_since
        if since is not None and time.monotonic() - since > self.config.unready_after:
            raise RuntimeError(f"batches failing for {time.monotonic() - since:.0f}s: {self.last_error}")

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
            # taking a large failing batch apart record by record can take minutes without a poll
            "max.poll.interval.ms": 900_000,
            **c.consumer_overrides,
        }

    def run(self) -> None:
        """Consume until `stop()`; then finish the batch in hand, commit and close."""
        consumer = Consumer(self._consumer_config())
        if self.config.transactional:
            self._retrying("init_transactions", self._init_transactions)
        consumer.subscribe(list(self.config.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("%s consuming %s as group %s", self.config.stage, list(self.config.topics), self.config.group_id)
        try:
            while not self._stop.is_set():
                self.last_loop = time.monotonic()
                if self._paused and self.last_loop >= self._resume_at:
                    self._resume(consumer)
                # wait for the first record only, then take what is already there: a batch never
                # waits for company, so latency stays low at low rates and batches grow under load
                first = consumer.poll(self.config.batch_timeout)
                if first is None:
                    self._refresh_lag(consumer)
                    continue
                self._record_at = self.last_loop
                msgs = (
                    [first, *consumer.consume(self.config.batch_size - 1, 0)] if self.config.batch_size > 1 else [first]
                )
                if self.config.linger > 0:
                    self._linger(consumer, msgs)
                batch = self._usable(msgs)
                if batch:
                    self._process(consumer, batch)
                    self._record_at = time.monotonic()  # a batch can take long (isolation): not a stall
                self._refresh_lag(consumer)
        finally:
            log.info("%s stopping: closing consumer", self.config.stage)
            consumer.close()
            self.producer.close()

    def _linger(self, consumer: Consumer, msgs: list[Message]) -> None:
        """Top `msgs` up until the batch is full or the linger time since the first record is over."""
        deadline = time.monotonic() + self.config.linger
        while len(msgs) < self.config.batch_size and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            msgs += consumer.consume(self.config.batch_size - len(msgs), min(left, 0.1))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in gone:
            self.committed.pop(key, None)
        # A partition paused for a retry and then revoked (also when the group session was lost
        # while Kafka was away) must not come back paused: nothing would ever resume it.
        revoked_paused = [tp for tp in self._paused if (tp.topic, tp.partition) in gone]
        if revoked_paused:
            try:
                consumer.resume(revoked_paused)
            except KafkaException as e:
                log.info("resume of revoked partitions skipped: %s", e)
        self._paused = [tp for tp in self._paused if (tp.topic, tp.partition) not in gone]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Partitions (re)assigned start fetching, whatever state they were left in before.
        paused = {(tp.topic, tp.partition) for tp in self._paused}
        fresh = [tp for tp in partitions if (tp.topic, tp.partition) not in paused]
        if fresh:
            try:
                consumer.resume(fresh)
            except KafkaException as e:
                log.info("resume of assigned partitions skipped: %s", e)

    def _usable(self, msgs: list[Message]) -> list[Message]:
        if not self._paused and not any([m.error() for m in msgs]):
            return msgs  # the usual case, a fifth of the time of looking at each one below
        paused = {(tp.topic, tp.partition) for tp in self._paused}
        out = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            if paused and (m.topic(), m.partition()) in paused:
                continue  # fetched before the pause; it comes again after the rewind
            out.append(m)
        return out

    # -- one batch ----------------------------------------------------------------

    def _process(self, consumer: Consumer, batch: list[Message]) -> None:
        started = time.perf_counter()
        key = _first_position(batch)
        try:
            self._commit_batch(consumer, batch, lambda: self.handler.handle(batch), batch)
        except _Retry:
            return
        except (KafkaException, FatalError):  # fatal: the process must restart
            raise
        except Exception as e:
            attempts = self._attempts.get(key, 0) + 1
            if attempts < self.config.isolate_after:
                self._attempts[key] = attempts
                log.exception(
                    "%s: batch of %d from %s[%d]@%d failed (attempt %d); retrying",
                    self.config.stage,
                    len(batch),
                    *key,
                    attempts,
                )
                self._schedule_retry(consumer, batch, "handler", e)
                return
            self._attempts.pop(key, None)
            self._isolate(consumer, batch)
            return
        self._attempts.pop(key, None)
        if len(self._attempts) > 10_000:
            self._attempts.clear()
        self.sensor.on_batch(len(batch), time.perf_counter() - started)

    def _isolate(self, consumer: Consumer, batch: list[Message]) -> None:
        """Process a failing batch one message at a time; dead-letter the ones that fail."""
        log.warning("%s: taking a failing batch of %d apart to find the poison", self.config.stage, len(batch))
        for i, msg in enumerate(batch):
            self.last_loop = time.monotonic()  # slow, but moving: not a stuck loop
            rest = batch[i:]  # rewound together when this one has to wait
            try:
                self._commit_batch(consumer, [msg], lambda m=msg: self.handler.handle([m]), rest)  # type: ignore[misc]
                continue
            except _Retry:
                return
            except (KafkaException, FatalError):
                raise
            except Exception as e:
                reason = f"{self.config.stage} failed on this record: {type(e).__name__}: {e}"
                kind = type(e).__name__
                dead = dead_letter_from_message(msg, stage=self.config.stage, reason=reason, error_type=kind)
            try:
                self._commit_batch(consumer, [msg], lambda d=dead: Outcome(dead=[d]), rest)  # type: ignore[misc]
            except _Retry:
                return
            except (KafkaException, FatalError):
                raise
            except Exception as e:
                # even dead-lettering failed: retry the rest of the batch later
                self._schedule_retry(consumer, batch[i:], "handler", e)
                return

    def _commit_batch(
        self,
        consumer: Consumer,
        batch: list[Message],
        outcome_of: Callable[[], Outcome],
        rewind: list[Message],
    ) -> None:
        """One attempt at `batch`; on a transient failure rewind `rewind`, pause and raise _Retry."""
        try:
            if self.config.transactional:
                self._transaction(consumer, batch, outcome_of)
            else:
                self._sink(consumer, batch, outcome_of)
        except TransientError as e:
            self._schedule_retry(consumer, rewind, "transient", e)
            raise _Retry from e
        except (KafkaException, FatalError) as e:
            if isinstance(e, FatalError) or (e.args and e.args[0].fatal()):
                if self._stop.is_set():  # shutting down: the batch is consumed again after the restart
                    log.warning("%s: %s while stopping; the batch is left uncommitted", self.config.stage, e)
                    raise _Retry from e
                if not self._renew_producer(consumer, e):
                    raise
                self.sensor.on_retry("producer")
                raise _Retry from e  # the partitions are at their committed offsets again
            self._schedule_retry(consumer, rewind, "kafka", e)
            raise _Retry from e
        self.failing_since = None
        self.last_error = None
        for tp in _next_offsets(batch):
            self.committed[(tp.topic, tp.partition)] = tp.offset
        self.sensor.on_commit(len(self.committed))

    def _transaction(self, consumer: Consumer, batch: list[Message], outcome_of: Callable[[], Outcome]) -> None:
        p = self.producer.raw
        p.begin_transaction()
        try:
            self._produce(outcome_of())
            offsets, group = _next_offsets(batch), consumer.consumer_group_metadata()
            _bounded("send_offsets_to_transaction", lambda: p.send_offsets_to_transaction(offsets, group, 30), 30)
        except _Stuck:
            raise  # the producer is stuck: it is replaced, an abort would only wait on it too
        except BaseException:
            self._abort()
            raise
        try:
            _bounded("commit_transaction", lambda: p.commit_transaction(30), 30)
        except KafkaException as e:
            err = e.args[0]
            if err.txn_requires_abort():
                self._abort()
                raise
            # Timed out (or worse): committed or not, only a new producer can tell. Calling
            # commit_transaction again to resume it can block for good once the broker was
            # away, so the producer is replaced instead (see _renew_producer).
            raise FatalError(f"commit_transaction failed: {err}; the transaction's outcome is unknown") from e

    def _init_transactions(self) -> None:
        raw = self.producer.raw
        _bounded("init_transactions", lambda: raw.init_transactions(30), 30)

    def _abort(self) -> None:
        delay = self.config.backoff_initial
        raw = self.producer.raw
        for _ in range(5):
            try:
                _bounded("abort_transaction", lambda: raw.abort_transaction(30), 30)
                return
            except KafkaException as e:
                err = e.args[0]
                if err.fatal() or not err.retriable() or err.code() == KafkaError._CONFLICT:
                    raise FatalError(f"abort_transaction failed: {err}") from e
                log.warning("abort_transaction: %s; retrying in %.1fs", err, delay)
                time.sleep(delay)
                delay = min(self.config.backoff_max, delay * 2)
        raise FatalError("the transaction could not be aborted")

    def _renew_producer(self, consumer: Consumer, error: BaseException) -> bool:
        """Replace a transactional producer whose transaction failed for good, as a restart would.

        A transaction the broker lost while it was away can leave the producer in a fatal state
        (e.g. INVALID_TXN_STATE on the abort) or its commit unknown (timed out). The new
        producer has the same transactional id: its init_transactions fences the old one and
        settles what it left open (commits a commit under way, aborts the rest). Then every
        assigned partition goes back to its committed offset, so a batch whose commit did land
        is not consumed again and one whose commit did not is: exactly once holds.
        Returns False (the process must restart) outside transactions, while stopping, or when
        the last renewal was less than a minute ago (another instance keeps fencing this one);
        an init_transactions that never returns raises (_Stuck): the process restarts then too.
        """
        now = time.monotonic()
        if self._txn_id is None or self._stop.is_set() or now - self._renewed_at < 60:
            return False
        log.error("%s: the transactional producer failed for good (%s); replacing it", self.config.stage, error)
        self._renewed_at = now
        self.producer_renewals += 1
        old, self.producer = self.producer, self._new_producer()
        try:
            # not flushed or closed (a fenced producer's flush fails); the collector frees it, so
            # a service that replaces producers must not run with gc_freeze (start-up objects
            # are never collected then)
            old.raw.purge()
        except KafkaException as e:
            log.info("purge of the failed producer: %s", e)
        self._retrying("init_transactions", self._init_transactions)
        self._retrying("rewind to the committed offsets", lambda: self._rewind_to_committed(consumer))
        return not self._stop.is_set()

    def _rewind_to_committed(self, consumer: Consumer) -> None:
        parts = consumer.assignment()
        if not parts:
            return
        committed = consumer.committed(parts, timeout=30)
        failed = [tp for tp in committed if tp.error is not None]
        if failed:  # never guess a position: ask again
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"committed offsets not known: {failed[0].error}"))
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING  # nothing committed: auto.offset.reset
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            self.committed.pop((tp.topic, tp.partition), None)
        if self._paused:
            self._resume(consumer)

    def _sink(self, consumer: Consumer, batch: list[Message], outcome_of: Callable[[], Outcome]) -> None:
        outcome = outcome_of()
        failed_before = self.producer.failed
        self._produce(outcome)
        if (outcome.outputs or outcome.dead) and (self.producer.flush(30) or self.producer.failed != failed_before):
            raise TransientError(f"outputs or dead letters not acknowledged: {self.producer.last_error}")
        try:
            consumer.commit(offsets=_next_offsets(batch), asynchronous=False)
        except KafkaException as e:
            # A rebalance took the partitions: the new owner gets the batch again, and
            # the sink is idempotent, so this is safe; anything else is retried.
            code = e.args[0].code()
            if code in (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID):
                log.warning("commit lost to a rebalance (%s); the batch will be redelivered", e.args[0])
                return
            raise

    def _produce(self, outcome: Outcome) -> None:
        records: list[OutRecord] = list(outcome.outputs)
        records += [encode_dead_letter(self.codec, d) for d in outcome.dead]
        self.topics.ensure({r.topic for r in records})
        produce = self.producer.raw.produce
        for r in records:
            try:
                produce(r.topic, r.value, r.key, headers=r.headers)  # type: ignore[arg-type]  # lists
            except BufferError:  # the local queue is full: wait for room through the wrapper
                self.producer.produce(r.topic, r.value, r.key, r.headers)
        if outcome.dead:
            first = outcome.dead[0]
            log.warning(
                "%s: %d dead letter(s); first from %s[%s]@%s: %s",
                self.config.stage,
                len(outcome.dead),
                first.original_topic,
                first.original_partition,
                first.original_offset,
                first.reason,
            )
            self.sensor.on_dead_letter(len(outcome.dead))
        self.sensor.on_produced(len(records))

    # -- retries ------------------------------------------------------------------

    def _schedule_retry(self, consumer: Consumer, msgs: list[Message], kind: str, error: BaseException) -> None:
        """Rewind the partitions of `msgs` to their first offsets and pause them for a backoff."""
        first: dict[tuple[str, int], int] = {}
        for m in msgs:
            topic, part, off = position(m)
            if off < first.get((topic, part), off + 1):
                first[(topic, part)] = off
        parts = [TopicPartition(t, p) for t, p in first]
        try:
            consumer.pause(parts)
            for (t, p), off in first.items():
                consumer.seek(TopicPartition(t, p, off))
        except KafkaException as e:  # partition no longer ours: its new owner starts from the commit
            log.info("rewind skipped: %s", e)
        known = {(tp.topic, tp.partition) for tp in self._paused}
        self._paused += [tp for tp in parts if (tp.topic, tp.partition) not in known]
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        self.last_error = f"{type(error).__name__}: {error}"[:500]
        failing_for = now - self.failing_since
        delay = min(self.config.backoff_max, self.config.backoff_initial * 2 ** min(failing_for, 10))
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
        self._resume_at = now + delay
        self.sensor.on_retry(kind)
        (t, p), off = next(iter(first.items()))
        log.warning(
            "%s: %s failure at %s[%d]@%d (%s); retrying in %.2fs",
            self.config.stage,
            kind,
            t,
            p,
            off,
            self.last_error,
            delay,
        )

    def _resume(self, consumer: Consumer) -> None:
        try:
            consumer.resume(self._paused)
        except KafkaException as e:
            log.info("resume skipped: %s", e)
        self._paused = []

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
        if self._stall_checked < self._record_at:
            self._stall_every = self.stall_after  # records flowed since the last check
        if (
            not self._paused
            and now - self._record_at > self.stall_after
            and now - self._stall_checked > self._stall_every
        ):
            self._stall_checked = now
            if not self._unstall(consumer, now):
                # idle and nothing waiting: ask less and less often (a request per partition)
                self._stall_every = min(600.0, self._stall_every * 2)

    def _unstall(self, consumer: Consumer, now: float) -> bool:
        """No record for a while and no retry of ours holds any back: ask the broker whether records
        are waiting (the cached watermarks of a paused partition stand still, so they cannot tell).
        If they are, a partition was left paused (or its fetch is stuck) across a lost assignment:
        say what is known and resume every assigned partition."""
        assigned = consumer.assignment()
        if not assigned:
            return False
        try:
            positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assigned)}
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(assigned, timeout=5)}
            waiting = []
            for tp in assigned:
                key = (tp.topic, tp.partition)
                # the high offset the broker gives a read_committed consumer is the last stable one
                _low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                done = max(positions.get(key, -1), committed.get(key, -1), 0)
                if high > done:
                    waiting.append((tp.topic, tp.partition, done, high))
        except KafkaException as e:
            log.info("%s: could not check for waiting records: %s", self.config.stage, e)
            return False
        if not waiting:
            return False
        log.warning(
            "%s: no record for %.0fs while records wait (topic, partition, at, end): %s; assignment %s;"
            " resuming every assigned partition",
            self.config.stage,
            now - self._record_at,
            waiting,
            [(tp.topic, tp.partition) for tp in assigned],
        )
        self.sensor.on_retry("stall")
        try:
            consumer.resume(assigned)
        except KafkaException as e:
            log.info("resume skipped: %s", e)
        return True


def _bounded(what: str, call: Callable[[], object], timeout: float, grace: float = 15.0) -> None:
    """`call()` (a transactional API call given `timeout` seconds), on a thread of its own.

    librdkafka does not always keep the timeout of its transactional calls: a coordinator
    request that lost its broker (Kafka restarted) can wait forever (confluentinc/librdkafka
    #5456, #5511; seen here as a normalizer stuck in send_offsets_to_transaction long after
    Kafka was back). When the call has not returned `grace` seconds after its own timeout,
    FatalError says so and the producer is replaced; the stuck thread is left behind.
    """
    done = threading.Event()
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)
        finally:
            done.set()

    threading.Thread(target=run, name=what, daemon=True).start()
    if not done.wait(timeout + grace):
        raise _Stuck(f"{what} did not return within {timeout + grace:.0f}s (its timeout is {timeout:.0f}s)")
    if outcome[0] is not None:
        raise outcome[0]


def _first_position(batch: list[Message]) -> tuple[str, int, int]:
    return position(batch[0])


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for m in batch:
        topic, part, off = position(m)
        if off > last.get((topic, part), -1):
            last[(topic, part)] = off
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
