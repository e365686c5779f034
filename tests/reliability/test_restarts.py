"""Kill -9 or SIGTERM the normalizer and the event store mid-stream, restart them: still exactly once."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from otbus_core.topics import tags_topic
from tests.support import Infra, Service, Stack, ignition_events, read_topic, wait_until

pytestmark = pytest.mark.e2e

SIZE = 500


class Poster:
    """Posts batches of unique events until stopped; remembers what was accepted."""

    def __init__(self, stack: Stack, tenant: str, prefix: str) -> None:
        self.stack, self.tenant, self.prefix = stack, tenant, prefix
        self.accepted = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        b = 0
        while not self._stop.is_set():
            r = self.stack.post_batch(self.tenant, list(ignition_events(SIZE, start=b * SIZE, prefix=self.prefix)))
            if r.status_code != 200 or r.json()["accepted"] != SIZE:
                self.errors.append(f"batch {b}: {r.status_code} {r.text[:200]}")
                return
            self.accepted += SIZE
            b += 1
            time.sleep(0.05)

    def __enter__(self) -> Poster:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.fixture
def stack(infra: Infra) -> Iterator[Stack]:
    s = Stack.build(infra, n_tenants=1).start()
    yield s
    s.stop()


def _interrupt(stack: Stack, poster: Poster, svc: Service, how: Callable[[Service], None]) -> None:
    """Interrupt `svc` while events are in flight, then start it again."""
    t = stack.tenants[0]
    accepted_before = poster.accepted
    wait_until(lambda: poster.accepted >= accepted_before + 2 * SIZE, 60, "posting under way")
    stored = stack.stored_count(t)
    assert stored < poster.accepted, "the interruption must find work in flight"
    how(svc)
    time.sleep(1)
    wait_until(lambda: poster.accepted >= accepted_before + 4 * SIZE, 60, "posting goes on while it is down")
    svc.start()


def _assert_exactly_once(stack: Stack, expected: int) -> None:
    t = stack.tenants[0]
    wait_until(lambda: stack.stored_count(t) >= expected, 180, "all events stored")
    time.sleep(2)  # anything late and duplicate would show up now
    events = stack.all_events(t)
    tags = Counter(e["payload"]["source_tag"] for e in events)
    assert len(events) == expected, f"stored {len(events)} events, posted {expected}"
    assert len(tags) == expected and max(tags.values()) == 1, "each posted event stored exactly once"
    committed = read_topic(stack.infra.kafka_bootstrap, tags_topic(t), timeout=60)
    assert len(committed) == expected, "the tags topic holds each record once (read_committed)"
    assert len(Counter(m.key() for m in committed)) == expected


def _sigterm(svc: Service) -> None:
    # uvicorn re-raises the signal after its graceful shutdown, so its exit status is -SIGTERM
    code = svc.stop(30)
    assert code in (0, -signal.SIGTERM), f"{svc.name} exited with {code} on SIGTERM:\n{svc.log_tail()}"
    assert "stopping: closing consumer" in svc.log_tail(), "the consumer finished and closed"


@pytest.mark.parametrize(("how", "name"), [(Service.kill9, "kill -9"), (_sigterm, "SIGTERM")])
def test_interrupt_normalizer_and_event_store_mid_stream(
    stack: Stack, how: Callable[[Service], None], name: str
) -> None:
    with Poster(stack, stack.tenants[0], "R") as poster:
        _interrupt(stack, poster, stack.normalizer, how)
        _interrupt(stack, poster, stack.store, how)
        _interrupt(stack, poster, stack.normalizer, how)
        wait_until(lambda: poster.accepted >= 40 * SIZE, 120, "enough posted")
    assert not poster.errors, poster.errors
    _assert_exactly_once(stack, poster.accepted)
