"""Adapter publishing: readings -> raw reading batch records -> the spool -> Kafka.

`RawEncoder` turns one source's readings into raw reading batch records (CloudEvents
headers, Avro value, key = source id), split so that no record passes the broker's size
limit. `SpoolDrainer` is the one thread that produces from the spool, in order, with a
producer that never gives up on a record (librdkafka retries until the broker is back),
and releases records from the spool only when Kafka has acknowledged them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as _Producer

from otbus_core.codec import AvroCodec, ColumnEncoder
from otbus_core.envelope import TYPE_RAW_READINGS, ce_headers, micros_to_rfc3339, now_micros
from otbus_core.exceptions import TransientError
from otbus_core.ids import uuid7, uuid7_block, uuid7_millis
from otbus_core.kafka import admin_client, base_config, find_event_ids
from otbus_core.producer import PRODUCER_DEFAULTS
from otbus_core.raw import MAX_RECORD_BYTES, NONE, REPEATING_COLUMNS, encode_in_chunks, pack_values
from otbus_core.schemas import RAW_READING_BATCH
from otbus_core.settings import OtbusSettings
from otbus_core.spool import Spool, SpoolRecord
from otbus_core.topics import TopicProvisioner, raw_topic

__all__ = ["MAX_RECORD_BYTES", "RawEncoder", "Reading", "SpoolDrainer"]

log = logging.getLogger(__name__)


class Reading(NamedTuple):
    """One reading as an adapter got it from its protocol."""

    tag: str
    value: bool | int | float | str | None
    source_time: int | None = None  # µs since the epoch, UTC, as the source stamped it
    quality_code: int | None = None  # the protocol's own code (OPC-UA status, Modbus exception...)
    quality: str = ""  # quality text, when the protocol gives one
    data_type: str = ""  # the type the source declared, in its own words
    unit: str = ""
    attributes: Mapping[str, str] | None = None


class RawEncoder:
    """Readings of one source -> raw reading batch records for `{tenant}.ot.raw.{protocol}.v1`."""

    def __init__(self, codec: AvroCodec, max_readings: int = 1000) -> None:
        self.codec = codec
        self.max_readings = max_readings
        self._encoder = ColumnEncoder(codec.schemas.latest(RAW_READING_BATCH), REPEATING_COLUMNS)

    def records(
        self,
        tenant: str,
        protocol: str,
        source_id: str,
        context: Mapping[str, str],
        readings: Sequence[Reading],
        received: int | None = None,
    ) -> list[SpoolRecord]:
        topic = raw_topic(tenant, protocol)
        prefix, uri = self.codec.header(RAW_READING_BATCH, topic)
        received = received if received is not None else now_micros()
        key = source_id.encode()
        source = f"/otbus/{protocol}/{source_id}"
        time_text = micros_to_rfc3339(received)
        out: list[SpoolRecord] = []

        def encode(chunk: Sequence[Reading]) -> bytes:
            return prefix + self._encoder.encode(_columns(source_id, protocol, context, received, chunk))

        for chunk, value in encode_in_chunks(readings, self.max_readings, encode):
            headers = ce_headers(uuid7(), source, TYPE_RAW_READINGS, tenant, time_text, source_id, uri)
            out.append(SpoolRecord(topic, key, value, [(k, v.encode()) for k, v in headers], len(chunk)))
        return out


def _columns(
    source_id: str, protocol: str, context: Mapping[str, str], received: int, chunk: Sequence[Reading]
) -> dict[str, Any]:
    # the readings turned into columns in one zip; None stands out with one `in` per column
    tags, values, times, codes, qualities, data_types, units, attributes = zip(*chunk, strict=True)
    quality_codes = [NONE if c is None else c for c in codes] if None in codes else list(codes)
    source_times = [NONE if t is None else t for t in times] if None in times else list(times)
    return {
        "source_id": source_id,
        "protocol": protocol,
        "context": dict(context),
        "first_id": uuid7_block(len(chunk)),
        "received_time": received,
        "tags": list(tags),
        **pack_values(values),
        "data_types": list(data_types),
        "qualities": list(qualities),
        "quality_codes": quality_codes,
        "source_times": source_times,
        "units": list(units) if any(units) else [],
        "attributes": [dict(a) if a else {} for a in attributes] if any(attributes) else [],
    }


_BROKER_DOWN = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})
# errors that asking again does not cure (not allowed to read the topic, a misconfiguration)
_LASTING = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError._INVALID_ARG,
        KafkaError._UNSUPPORTED_FEATURE,
        KafkaError.UNSUPPORTED_VERSION,
    }
)


class SpoolDrainer:
    """Produces the spool's records in order and acknowledges them back to the spool.

    The producer has no delivery timeout: while the broker is away librdkafka keeps the
    records in flight (at most `max_in_flight`) and the rest wait in the spool. A record
    Kafka refuses for good (too large, not authorized) is counted as dropped and logged;
    a fatal producer error stops the drainer (`fatal`), and the service must restart
    (the spool still holds everything not acknowledged).
    """

    def __init__(
        self,
        spool: Spool,
        settings: OtbusSettings,
        *,
        max_in_flight: int = 2000,
        unreachable_after: float = 15.0,
        **producer_overrides: Any,
    ) -> None:
        self.spool = spool
        self.max_in_flight = max_in_flight
        self.unreachable_after = unreachable_after
        conf = {
            **PRODUCER_DEFAULTS,
            # the batcher has made the records (up to batch_max_readings readings each) and holds
            # them back itself while earlier ones are in flight; a long linger here only adds delay
            "linger.ms": 1,
            **base_config(settings),
            "message.timeout.ms": 0,  # never: the spool is the buffer, order is kept
            "error_cb": self._on_error,
            **producer_overrides,
        }
        self.producer = _Producer(conf)
        self.topics = TopicProvisioner(
            admin_client(settings),
            partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
            retention_ms=settings.topic_retention_ms,
        )
        self.delivered_records = 0
        self.delivered_readings = 0
        self.refused_readings = 0
        self.last_delivery: float | None = None  # time.time() of the last acknowledgment
        self.broker_error: str | None = None
        self.broker_error_since: float | None = None
        self.fatal: KafkaError | None = None
        self._inflight: OrderedDict[int, tuple[float, int, bool]] = OrderedDict()  # seq -> (sent, readings, done)
        self._next_seq = spool.acked
        self._config = base_config(settings)
        # Records left in the spool by an earlier process: the first of them may have reached
        # Kafka without the acknowledgment reaching us (the broker went away, or we stopped).
        self._check_resend = spool.depth_records > 0
        self._already_sent: set[int] = set()  # spool seqs found in Kafka: acknowledged, not sent
        self.skipped_resends = 0
        self.on_idle: Callable[[], None] | None = None
        """Called when the spool is empty and everything sent is acknowledged."""
        self.lookup_patience = 120.0
        """Seconds an unexplained error may keep the look-up from finishing before the records are sent anyway."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-drainer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in _BROKER_DOWN:
            self._broker_down(str(err))
        if err.fatal():
            self.fatal = err
        log.warning("kafka: %s", err)

    def _broker_down(self, why: str) -> None:
        if self.broker_error_since is None:
            self.broker_error_since = time.monotonic()
        self.broker_error = why

    def _run(self) -> None:
        try:
            if self._check_resend:
                self._find_already_sent()
            while not self._stop.is_set() and self.fatal is None:
                room = self.max_in_flight - len(self._inflight)
                if room > 0 and self.oldest_in_flight_age() < 1.0:
                    # wait on the spool, which wakes us the moment a record comes in; delivery
                    # reports are served between waits (the producer's poll cannot be woken)
                    self._send(self.spool.read(min(room, 500), timeout=0.002 if self._inflight else 0.05))
                    self.producer.poll(0)
                elif room > 0:  # Kafka is slow or away: no need to look 500 times a second
                    self._send(self.spool.read(min(room, 500)))
                    self.producer.poll(0.05)
                else:
                    self.producer.poll(0.005)
                self._advance()
        except Exception:
            log.exception("spool drainer failed")
            raise

    def _send(self, records: list[tuple[int, SpoolRecord]]) -> None:
        if not records:
            return
        topics = {r.topic for _, r in records}
        while not self._stop.is_set():
            try:
                self.topics.ensure(topics)
                break
            except TransientError as e:  # the broker is away: try again, nothing is lost
                self._broker_down(str(e))
                self._stop.wait(1.0)
        for seq, r in records:
            if seq in self._already_sent:
                self._already_sent.discard(seq)
                self._inflight[seq] = (time.monotonic(), r.readings, True)
                self._next_seq = seq + 1
                continue
            self._inflight[seq] = (time.monotonic(), r.readings, False)
            cb = self._callback(seq)
            while True:
                try:
                    self.producer.produce(r.topic, r.value, r.key, headers=r.headers, on_delivery=cb)  # type: ignore[arg-type]
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self._next_seq = seq + 1

    def _find_already_sent(self) -> None:
        """Find which of the first spooled records an earlier process already got into Kafka.

        Those were in flight when it stopped: written by the broker, acknowledgment lost. The
        idempotent producer cannot recognise them across processes, so they are looked up by
        event id (a UUIDv7, so its time bounds where to look) and acknowledged without
        sending. Waits for the broker; if it cannot look, it sends them (at least once).
        """
        window = self.spool.read(self.max_in_flight)
        self.spool.rewind()
        by_id: dict[bytes, int] = {}
        for seq, r in window:
            ce_id = next((v for k, v in r.headers if k == "ce_id"), None)
            if ce_id is not None:
                by_id[ce_id] = seq
        if not by_id:
            return
        since_ms = min(uuid7_millis(i.decode()) for i in by_id) - 60_000  # allow for clock steps
        topics = {r.topic for _, r in window}
        delay = 0.5
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                found, complete = find_event_ids(self._config, topics, by_id.keys(), since_ms)
                break
            except KafkaException as e:
                err = e.args[0]
                code = err.code()
                # Just after a broker restart, partition errors (UNKNOWN_LEADER_EPOCH, NOT_LEADER...)
                # come without librdkafka's retriable flag; giving up on them sent records twice.
                lasting = code in _LASTING or time.monotonic() - started > self.lookup_patience
                if lasting and not (code in _BROKER_DOWN or code == KafkaError._TIMED_OUT):
                    log.warning("cannot look for already delivered records (%s); sending them (at least once)", err)
                    return
                log.info("looking for already delivered records: %s; asking again in %.1fs", err, delay)
                self._broker_down(str(e))  # nothing could be sent either
                self._stop.wait(delay)
                delay = min(10.0, delay * 2)
        else:
            return
        self.broker_error = None
        self.broker_error_since = None
        if not complete:
            log.warning("could not read all of %s since the spool's oldest record; some may be sent twice", topics)
        self._already_sent = {by_id[i] for i in found}
        self.skipped_resends = len(found)
        if found:
            log.info(
                "%d of the %d oldest spooled records already reached Kafka before the restart; not sent again",
                len(found),
                len(window),
            )

    def _callback(self, seq: int) -> Any:
        def done(err: KafkaError | None, msg: Message) -> None:
            sent, readings, _ = self._inflight[seq]
            if err is None:
                self.delivered_records += 1
                self.delivered_readings += readings
                self.last_delivery = time.time()
                self.broker_error = None
                self.broker_error_since = None
            elif err.fatal():
                self.fatal = err
                log.error("kafka producer fatal error: %s; the adapter must restart (the spool keeps the rest)", err)
                return
            else:
                self.refused_readings += readings
                log.error("Kafka refused a record of %d readings for %s: %s (dropped)", readings, msg.topic(), err)
            self._inflight[seq] = (sent, readings, True)

        return done

    def _advance(self) -> None:
        acked = None
        while self._inflight:
            seq, (_, _, done) = next(iter(self._inflight.items()))
            if not done:
                break
            self._inflight.popitem(last=False)
            acked = seq + 1
        if acked is not None:
            self.spool.ack(acked)
            if self.on_idle is not None and not self._inflight and self.spool.depth_records == 0:
                self.on_idle()

    # -- state ----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def oldest_in_flight_age(self) -> float:
        try:
            sent = next(iter(self._inflight.values()))[0]
        except (StopIteration, RuntimeError):
            return 0.0
        return time.monotonic() - sent

    def problem(self) -> str | None:
        """Why the broker counts as unreachable now, or None."""
        if self.fatal is not None:
            return f"fatal producer error: {self.fatal}"
        if not self._thread.is_alive() and self._thread.ident is not None and not self._stop.is_set():
            return "the spool drainer thread died"
        age = self.oldest_in_flight_age()
        if age > self.unreachable_after:
            return f"Kafka has not acknowledged a record for {age:.0f}s ({self.broker_error or 'no error reported'})"
        since = self.broker_error_since
        if since is not None and time.monotonic() - since > self.unreachable_after:
            return f"Kafka unreachable for {time.monotonic() - since:.0f}s: {self.broker_error}"
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is in the spool for up to `timeout` seconds, then stop (the rest stays spooled)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.fatal is None and (self._inflight or self.spool.depth_records):
            time.sleep(0.02)
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        self.producer.flush(max(0.0, min(2.0, deadline - time.monotonic())))
        self.producer.poll(0)
        self._advance()
