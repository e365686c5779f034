"""Kafka away for 30 s while a Modbus device keeps changing, and the adapter restarted in the
middle of it with a full spool: every reading arrives, in order, none twice."""

from __future__ import annotations

import itertools
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from otbus_core.codec import AvroCodec
from otbus_core.raw import NONE, unpack_values
from otbus_core.schemas import RAW_READING_BATCH, TAG_RECORD
from otbus_core.topics import raw_topic, tags_topic
from tests.support import (
    Infra,
    ModbusSimulator,
    Service,
    free_port,
    infra_cmd,
    read_topic,
    tenant_normalizer,
    wait_until,
)

pytestmark = pytest.mark.e2e

CODEC = AvroCodec()
OUTAGE_S = 30
POLL_MS = 50

SOURCES = """
sources:
  - name: counter_device
    protocol: modbus
    endpoint: "modbus://127.0.0.1:{port}"
    site: plant1
    area: utilities
    line: boiler
    equipment: counter_device
    poll_groups:
      - name: fast
        interval_ms: {poll_ms}
        registers:
          - {{address: 1000, data_type: uint16, name: update_counter, signal_type: count}}
          - {{address: 3010, data_type: float32, name: oil_temperature}}
"""


def _status(adapter: Service) -> dict[str, Any]:
    return httpx.get(f"{adapter.url}/api/v1/status", timeout=5).json()  # type: ignore[no-any-return]


def test_kafka_outage_loses_nothing_and_keeps_order(
    infra: Infra, tenant: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sim = ModbusSimulator(free_port())
    sim.start()
    sources = tmp_path / "sources.yaml"
    sources.write_text(SOURCES.format(port=sim.port, poll_ms=POLL_MS))
    common = {**infra.env(), "OTBUS_METADATA_REFRESH_MS": "1000", "OTBUS_TENANTS": tenant}
    normalizer = tenant_normalizer(infra, tenant)
    adapter = Service(
        "ingest-modbus",
        "otbus_ingest_modbus",
        {
            **common,
            "OTBUS_TENANT": tenant,
            "OTBUS_SOURCES_FILE": str(sources),
            "OTBUS_STATE_DIR": str(tmp_path / "state"),
            "OTBUS_BROKER_UNREACHABLE_AFTER_S": "5",
        },
        free_port(),
    )
    normalizer.start()
    request.addfinalizer(normalizer.stop)  # also when an assertion about the adapter fails
    adapter.start()
    try:
        wait_until(lambda: _status(adapter)["kafka"]["delivered_readings"] > 0, 30, "first deliveries")
        infra_cmd("stop", "kafka")
        try:
            stopped = time.monotonic()
            wait_until(lambda: httpx.get(f"{adapter.url}/readyz", timeout=5).status_code == 503, 20, "readyz 503")
            time.sleep(10)
            # a restart with a non-empty spool, Kafka still away
            restart_from = time.time()
            assert adapter.stop() in (0, -15)
            left = re.search(r"adapter stopped: (\d+) records \((\d+) readings\) stay spooled", adapter.log_tail(200))
            assert left and int(left.group(2)) > 100, adapter.log_tail(20)
            adapter.start(wait_ready=False)
            restart_to = time.time()
            assert _status(adapter)["spool"]["readings"] >= int(left.group(2))
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
            spooled = _status(adapter)["spool"]
            assert spooled["readings"] > (OUTAGE_S - 20) * 1000 / POLL_MS, spooled  # it kept reading
        finally:
            infra_cmd("start", "kafka")
        wait_until(lambda: _status(adapter)["spool"]["records"] == 0, 120, "the spool drained")
        wait_until(lambda: httpx.get(f"{adapter.url}/readyz", timeout=5).status_code == 200, 60, "readyz 200")
        # graceful stop: what it read is delivered before it exits (uvicorn re-raises SIGTERM: -15)
        assert adapter.stop() in (0, -15)
        assert "adapter stopped: 0 records (0 readings) stay spooled" in adapter.log_tail(200)
    finally:
        adapter.stop()
        sim.stop()

    # the raw topic holds every poll, in order: source times step by about one poll interval
    raw = [
        CODEC.decode(m.value(), RAW_READING_BATCH)
        for m in read_topic(infra.kafka_bootstrap, raw_topic(tenant, "modbus"))
    ]
    counter: list[tuple[int, Any]] = []
    for batch in raw:
        values = unpack_values(batch)
        for tag, v, t, code in zip(batch["tags"], values, batch["source_times"], batch["quality_codes"], strict=True):
            if tag == "update_counter":
                assert code == 0 and t != NONE
                counter.append((t, v))
    times = [t for t, _ in counter]
    assert times == sorted(times), "readings out of order"
    # polls every 50 ms, except while the adapter was restarting
    pauses = [(a, b) for a, b in itertools.pairwise(times) if b - a > 1e6]
    assert len(pauses) == 1, f"gaps: {[(b - a) / 1e6 for a, b in pauses]}"
    (a, b) = pauses[0]
    assert restart_from * 1e6 - 1e6 <= a and b <= restart_to * 1e6 + 1e6, "a gap outside the restart: readings lost"
    assert times[-1] - times[0] > (OUTAGE_S + 5) * 1e6
    steps = [(v2 - v1) % 65536 for (t1, v1), (t2, v2) in itertools.pairwise(counter) if (t1, t2) != (a, b)]
    assert set(steps) <= {0, 1, 2}, f"counter jumped by {set(steps)}"  # it counts every 0.2 s; we poll every 0.05 s

    # and the normalizer turned each reading into exactly one tag record
    def all_normalized() -> list[dict[str, Any]] | None:
        tags = [CODEC.decode(m.value(), TAG_RECORD) for m in read_topic(infra.kafka_bootstrap, tags_topic(tenant))]
        mine = [r for r in tags if r["tag_name"] == "update_counter"]
        return tags if len(mine) >= len(counter) else None

    try:
        tags = wait_until(all_normalized, 90, "every reading normalized")
    except TimeoutError:
        # the normalizer's thread stacks go into the failure, to show where it stands
        assert normalizer.proc is not None
        if normalizer.proc.poll() is None:
            normalizer.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
        lines = [ln for ln in normalizer.log_tail(400).splitlines() if not ln.startswith("{") or "ERROR" in ln]
        pytest.fail("not every reading was normalized; the normalizer's last words:\n" + "\n".join(lines[-60:]))
    finally:
        normalizer.stop()
    mine = [r for r in tags if r["tag_name"] == "update_counter"]
    assert len(mine) == len(counter)
    assert len({r["event_id"] for r in tags}) == len(tags), "a reading was normalized twice"
    assert [r["source_time"] for r in mine] == times
