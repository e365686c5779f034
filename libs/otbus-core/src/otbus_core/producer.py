"""One producer wrapper: idempotent, acks=all, delivery reports counted, flush on stop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as _Producer

from otbus_core.exceptions import TransientError
from otbus_core.kafka import base_config
from otbus_core.metrics import NullSensor, Sensor
from otbus_core.settings import OtbusSettings

__all__ = ["Producer"]

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, str | bytes]]


PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
    "batch.size": 1_000_000,
    "queue.buffering.max.kbytes": 262_144,
    "message.max.bytes": 1_000_000,
}


class Producer:
    """Thin wrapper over confluent_kafka.Producer.

    `produce()` never drops: when the local queue is full it serves delivery reports
    until there is room. Delivery outcomes are counted (`delivered`, `failed`) and
    reported to the sensor. With `transactional_id` set it is a transactional producer
    (the runner drives the transaction).
    """

    def __init__(
        self,
        settings: OtbusSettings,
        *,
        transactional_id: str | None = None,
        sensor: Sensor | None = None,
        **overrides: Any,
    ) -> None:
        conf = {**PRODUCER_DEFAULTS, **base_config(settings), **overrides}
        if transactional_id:
            conf["transactional.id"] = transactional_id
            conf.setdefault("transaction.timeout.ms", 60_000)
        conf["on_delivery"] = self._on_delivery  # also for records produced through `raw`
        self._p = _Producer(conf)
        self.sensor = sensor or NullSensor()
        self.delivered = 0
        self.failed = 0
        self.last_error: KafkaError | None = None
        self.fatal: KafkaError | None = None
        self._last_error_log = 0.0
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def raw(self) -> _Producer:
        return self._p

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            self.sensor.on_delivery(True)
            return
        self.failed += 1
        self.last_error = err
        self.sensor.on_delivery(False)
        if err.fatal():
            self.fatal = err
        now = time.monotonic()
        if now - self._last_error_log > 5:  # an outage fails thousands at once: one line every 5 s
            log.error("delivery to %s failed: %s (%d failed so far)", msg.topic(), err, self.failed)
            self._last_error_log = now

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None = None,
        headers: Headers | None = None,
        on_delivery: Any = None,
    ) -> None:
        cb = on_delivery or self._on_delivery
        while True:
            try:
                self._p.produce(topic, value, key, headers=list(headers or ()), on_delivery=cb)
                return
            except BufferError:
                self._p.poll(0.05)
            except KafkaException as e:
                if e.args and e.args[0].fatal():
                    raise
                raise TransientError(f"produce to {topic} failed: {e}") from e

    def produce_async(
        self,
        loop: asyncio.AbstractEventLoop,
        records: Sequence[tuple[str, bytes, str | bytes | None, Headers | None]],
    ) -> asyncio.Future[None]:
        """Produce `records`; the future resolves when all are acknowledged (or fails on the first error).

        Needs the poller thread (`start_poller`) to serve delivery reports.
        """
        fut: asyncio.Future[None] = loop.create_future()
        pending = len(records)
        lock = threading.Lock()

        def settle(err: KafkaError | None) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(TransientError(f"Kafka delivery failed: {err}"))
            else:
                fut.set_result(None)

        def cb(err: KafkaError | None, msg: Message) -> None:
            nonlocal pending
            self._on_delivery(err, msg)
            with lock:
                pending -= 1
                last = pending == 0
            if err is not None or last:
                loop.call_soon_threadsafe(settle, err)

        if not records:
            fut.set_result(None)
            return fut
        for topic, value, key, headers in records:
            try:  # never wait on the event loop: a full local queue is an answer, not a pause
                self._p.produce(topic, value, key, headers=list(headers or ()), on_delivery=cb)
            except BufferError:
                raise TransientError("the producer's local queue is full (Kafka slow or away)") from None
            except KafkaException as e:
                if e.args and e.args[0].fatal():
                    raise
                raise TransientError(f"produce to {topic} failed: {e}") from e
        self.sensor.on_produced(len(records))
        return fut

    def start_poller(self, interval: float = 0.05) -> None:
        if self._poller is not None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                self._p.poll(interval)

        self._poller = threading.Thread(target=loop, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still in flight."""
        return int(self._p.flush(timeout))

    def check_ready(self) -> None:
        if self.fatal is not None:
            raise RuntimeError(f"the producer hit a fatal error and must be restarted: {self.fatal}")

    def __len__(self) -> int:
        return len(self._p)

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=2)
            self._poller = None
        left = self.flush(timeout)
        if left:
            log.error("producer closed with %d records undelivered", left)
