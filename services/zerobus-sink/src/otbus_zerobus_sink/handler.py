"""The sink's batch handler: tag records -> Delta rows -> one acknowledged delivery per target table.

`handle` returns only when Zerobus has acknowledged every row of the batch (the runner
then commits the offsets), so a crash before that re-sends the batch: at least once,
with the event id in each row for downstream dedup.

* A record that cannot be read or mapped goes to the DLQ with the reason.
* A stream that fails for a retriable reason (after the SDK's own recovery) raises
  TransientError: the runner rewinds and the batch is sent again on a new stream.
* A non-retriable rejection of records is narrowed down by halving: the halves are
  sent again on new streams until the rejected records stand alone; exactly those go
  to the DLQ with Zerobus's reason and the rest is written.
* A table that Zerobus will not open (missing, no permission, schema mismatch) and a
  table whose circuit is open make the batch wait (TransientError), so nothing is lost
  while an operator fixes the table; /readyz says which table and why.
* The other tables of a batch that has to wait are not written again on every retry: a
  table that acknowledged its part keeps, per partition, the highest offset it holds, and
  the retries skip those records for that table. A partition's marks are dropped once a
  batch holding it goes through whole (its offsets are then committed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import Message
from prometheus_client import Counter
from zerobus import NonRetriableException, ZerobusException

from otbus_core.codec import AvroCodec
from otbus_core.dlq import dead_letter_from_message
from otbus_core.exceptions import DecodeError, InvalidTenant, TransientError
from otbus_core.records import DeadLetter, Outcome
from otbus_core.schemas import TAG_RECORD
from otbus_core.topics import tenant_of_topic
from otbus_zerobus_sink.rows import tag_row
from otbus_zerobus_sink.targets import Router, Target, TargetRefused, Targets, record_failure, record_success

__all__ = ["STAGE", "SinkHandler"]

STAGE = "zerobus-sink"
log = logging.getLogger(__name__)

SKIPPED = Counter(
    "otbus_zerobus_resends_skipped_records_total",
    "Records of a retried batch not sent again because their table had acknowledged them",
    ["table"],
)


@dataclass(slots=True)
class _Group:
    """The records of one batch for one table."""

    target: Target
    msgs: list[Message] = field(default_factory=list)
    rows: list[bytes] = field(default_factory=list)
    queued: int = 0
    offset: int = -1
    t0: float | None = None
    error: BaseException | None = None


class SinkHandler:
    def __init__(self, codec: AvroCodec, targets: Targets, router: Router, records_per_message: int) -> None:
        self.codec = codec
        self.targets = targets
        self.router = router
        self.per_message = records_per_message
        self._tenants: dict[str, str] = {}
        # (table, topic, partition) -> highest offset the table acknowledged in a batch that
        # then had to be retried for another table's sake
        self._acked: dict[tuple[str, str, int], int] = {}
        self.skipped = 0

    def handle(self, messages: list[Message]) -> Outcome:
        groups: dict[str, _Group] = {}
        try:
            outcome = self._handle(messages, groups)
            if self._acked:  # the batch is whole: its partitions' offsets are committed next
                done = {(m.topic() or "", m.partition() or 0) for m in messages}
                self._acked = {k: v for k, v in self._acked.items() if (k[1], k[2]) not in done}
            return outcome
        except BaseException:
            # rows queued but not waited for must not be blamed on the next batch: every stream
            # this batch touched is dropped, the next attempt starts on new ones
            for g in groups.values():
                if g.queued or g.error is not None:
                    self.targets.drop(g.target)
            raise

    def _handle(self, messages: list[Message], groups: dict[str, _Group]) -> Outcome:
        dead: list[DeadLetter] = []
        skipped: dict[str, int] = {}
        try:
            self._group(messages, groups, dead, skipped)
        finally:
            for table, n in skipped.items():
                self.skipped += n
                SKIPPED.labels(table).inc(n)
                log.info("%d record(s) of a retried batch were acknowledged by %s before; not sent again", n, table)
        for g in groups.values():
            self._queue(g)
        dead += self._settle(list(groups.values()))
        return Outcome(dead=dead)

    def _group(
        self, messages: list[Message], groups: dict[str, _Group], dead: list[DeadLetter], skipped: dict[str, int]
    ) -> None:
        """Decode, map and route `messages` into `groups`, queueing full messages as they fill."""
        decode, route, per, acked = self.codec.decode, self.router, self.per_message, self._acked
        for m in messages:
            try:
                topic = m.topic() or ""
                tenant = self._tenants.get(topic)
                if tenant is None:
                    tenant = self._tenants[topic] = tenant_of_topic(topic)
                rec = decode(m.value(), TAG_RECORD)
                if rec["tenant"] != tenant:
                    raise InvalidTenant(f"record of tenant {rec['tenant']!r} on topic of tenant {tenant!r}")
                row = tag_row(rec)  # before the skip: a record that cannot be mapped is dead-lettered on every try
                table = route(tenant, rec["source_id"])
                if acked and (m.offset() or 0) <= acked.get((table, topic, m.partition() or 0), -1):
                    skipped[table] = skipped.get(table, 0) + 1
                    continue
            except (DecodeError, InvalidTenant, KeyError, TypeError, ValueError) as e:
                dead.append(
                    dead_letter_from_message(
                        m, stage=STAGE, reason=f"not a tag record: {type(e).__name__}: {e}", error_type=type(e).__name__
                    )
                )
                continue
            g = groups.get(table)
            if g is None:
                t = self.targets.target(table)
                if t.breaker.open:
                    raise TransientError(f"circuit open for {t.table}: {t.last_error}")
                g = groups[table] = _Group(t)
            g.msgs.append(m)
            g.rows.append(row)
            if len(g.rows) - g.queued >= per:
                # queue full messages while decoding goes on: Zerobus works on them meanwhile
                self._queue(g)

    def _mark(self, g: _Group) -> None:
        """Remember that the group's table holds its records, in case the batch is retried."""
        acked, table = self._acked, g.target.table
        for m in g.msgs:
            key = (table, m.topic() or "", m.partition() or 0)
            offset = m.offset() or 0
            if offset > acked.get(key, -1):
                acked[key] = offset

    # -- delivery -------------------------------------------------------------------------

    def _queue(self, g: _Group) -> None:
        """Hand the group's not yet queued rows to its stream; a failure is kept for `_settle`."""
        if g.error is not None or g.queued == len(g.rows):
            return
        if g.t0 is None:
            g.t0 = time.perf_counter()
        try:
            g.offset = self._send(g.target, g.rows[g.queued :], g.offset)
            g.queued = len(g.rows)
        except Exception as e:  # anything else (a headers provider, the catalog) is retried later
            g.error = e

    def _settle(self, groups: list[_Group]) -> list[DeadLetter]:
        """Wait for every table's acknowledgment; dead-letter rejected records; raise if any must be retried."""
        dead: list[DeadLetter] = []
        transient: list[str] = []
        held: list[_Group] = []  # acknowledged whole: marked if the batch has to be retried
        for g in groups:
            t, error = g.target, g.error
            if error is None:
                try:
                    t.stream.wait_for_offset(g.offset)
                    record_success(t, len(g.rows), time.perf_counter() - (g.t0 or 0.0))
                    held.append(g)
                    continue
                except Exception as e:
                    error = e
            if isinstance(error, NonRetriableException):
                self.targets.drop(t)
                try:
                    rejected = self._narrow_down(t, g.msgs, g.rows, error)
                    if not rejected:  # records with a reason are not marked: a retry dead-letters them
                        held.append(g)
                    dead += rejected
                    continue
                except Exception as e:  # the table, not a record: retried later
                    error = e
            self.targets.drop(t)
            record_failure(t, "refused" if isinstance(error, TargetRefused) else "transient", error)
            transient.append(f"{t.table}: {type(error).__name__}: {error}")
        if transient:
            for g in held:
                self._mark(g)
            raise TransientError("; ".join(transient)[:2000])
        return dead

    def _send(self, t: Target, rows: list[bytes], queued: int = -1) -> int:
        """Queue `rows` on the table's stream; the last offset to wait for.

        `queued` is the last offset already queued on this stream for the same batch, if any.
        """
        stream = self.targets.stream(t)
        per = self.per_message
        offset: int | None = queued if queued >= 0 else None
        try:
            for i in range(0, len(rows), per):
                offset = stream.ingest_records_offset(rows[i : i + per])
        except NonRetriableException:
            raise
        except ZerobusException:
            # the stream broke while we were still queueing; its cause (perhaps a rejection of
            # what was queued before) is what waiting on the queued part reports
            if offset is not None:
                stream.wait_for_offset(offset)
            raise
        assert offset is not None  # noqa: S101 - never called with no rows
        return offset

    def _deliver(self, t: Target, rows: list[bytes]) -> None:
        """Send and wait on the table's stream (a new one when the last one failed)."""
        t0 = time.perf_counter()
        try:
            offset = self._send(t, rows)
            t.stream.wait_for_offset(offset)
        except BaseException:
            self.targets.drop(t)
            raise
        record_success(t, len(rows), time.perf_counter() - t0)

    def _narrow_down(self, t: Target, msgs: list[Message], rows: list[bytes], error: BaseException) -> list[DeadLetter]:
        """Halve a rejected delivery until each rejected record stands alone; those are dead-lettered."""
        log.warning("%s rejected a batch of %d (%s); finding the records at fault", t.table, len(rows), error)
        dead: list[DeadLetter] = []
        # ranges still to try, the next one last; a range known to fail is split before it is pushed
        todo: list[tuple[int, int]] = []

        def split(lo: int, hi: int, why: BaseException) -> None:
            if hi - lo == 1:
                dead.append(_rejected(msgs[lo], t.table, why))
                t.dead_lettered += 1
                return
            mid = (lo + hi) // 2
            todo.append((mid, hi))
            todo.append((lo, mid))

        if len(rows) == 1:
            todo.append((0, 1))  # a lone record is tried once more, alone, on a new stream
        else:
            split(0, len(rows), error)
        while todo:
            lo, hi = todo.pop()
            try:
                self._deliver(t, rows[lo:hi])
            except NonRetriableException as e:
                split(lo, hi, e)
        if dead:
            log.warning("%d record(s) rejected by %s go to the DLQ: %s", len(dead), t.table, dead[0].reason)
        return dead

    def close(self) -> None:
        self.targets.close()


def _rejected(msg: Message, table: str, error: BaseException) -> DeadLetter:
    return dead_letter_from_message(
        msg, stage=STAGE, reason=f"rejected by Zerobus for {table}: {error}", error_type=type(error).__name__
    )
