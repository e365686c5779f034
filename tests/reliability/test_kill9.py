"""Kill -9 the normalizer and the event store mid-stream, restart them: still exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from otbus_core.topics import tags_topic
from tests.support import Infra, Stack, ignition_events, read_topic, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(infra: Infra) -> Iterator[Stack]:
    s = Stack.build(infra, n_tenants=1).start()
    yield s
    s.stop()


def test_kill9_normalizer_and_event_store_mid_stream(stack: Stack) -> None:
    tenant = stack.tenants[0]
    batches, size = 40, 500
    posted: list[int] = []
    errors: list[str] = []

    def post() -> None:
        for b in range(batches):
            r = stack.post_batch(tenant, list(ignition_events(size, start=b * size, prefix="K9")))
            if r.status_code != 200 or r.json()["accepted"] != size:
                errors.append(f"batch {b}: {r.status_code} {r.text[:200]}")
            else:
                posted.append(b)
            time.sleep(0.1)

    poster = threading.Thread(target=post)
    poster.start()
    wait_until(lambda: stack.stored_count(tenant) > 1000, 60, "first events stored")
    stack.normalizer.kill9()
    time.sleep(1)
    stack.normalizer.start()
    wait_until(lambda: len(posted) > batches // 2, 60, "half the batches posted")
    stack.store.kill9()
    time.sleep(1)
    stack.store.start()
    poster.join(120)
    assert not errors, errors
    assert len(posted) == batches

    expected = batches * size
    wait_until(lambda: stack.stored_count(tenant) >= expected, 180, "all events stored")
    time.sleep(2)  # anything late and duplicate would show up now
    events = stack.all_events(tenant)
    tags = Counter(e["payload"]["source_tag"] for e in events)
    assert len(events) == expected, f"stored {len(events)} events, posted {expected}"
    assert len(tags) == expected and max(tags.values()) == 1, "each posted event stored exactly once"
    assert len({e["event_id"] for e in events}) == expected

    committed = read_topic(stack.infra.kafka_bootstrap, tags_topic(tenant), timeout=60)
    keys = Counter(m.key() for m in committed)
    assert len(committed) == expected, "the tags topic holds each record once (read_committed)"
    assert len(keys) == expected
