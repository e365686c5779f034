"""zerobus-sink against real Kafka, the real Zerobus SDK and the emulator writing real Delta tables.

The emulator runs as its own process (OAuth required, so the SDK's token request is
exercised too); its faults are switched over its HTTP control endpoint.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.admin import AdminClient
from deltalake import DeltaTable

from otbus_core.codec import AvroCodec
from otbus_core.schemas import TAG_RECORD
from otbus_core.topics import TopicProvisioner, dlq_topic, tags_topic
from otbus_zerobus_sink.rows import TagRow
from otbus_zerobus_sink.rowschema import columns as row_columns
from otbus_zerobus_sink.rowschema import create_table_request
from tests.support import (
    Infra,
    Service,
    free_port,
    new_tenant,
    produce_tag_records,
    tag_record,
    topic_records,
    wait_until,
)

pytestmark = pytest.mark.integration

_CODEC = AvroCodec()
CLIENT_ID, CLIENT_SECRET = "otbus-sink-sp", "s3cr3t-for-tests"


class Emulator(Service):
    grpc_port: int

    def faults(self, **faults: Any) -> None:
        r = httpx.put(f"{self.url}/control/faults", json=faults, timeout=5)
        assert r.status_code == 200, r.text

    def create_tables(self, *tables: str, columns: list[tuple[str, str]] | None = None) -> None:
        """Create the tables through the catalog API, as an operator does before the sink writes."""
        for table in tables:
            body = create_table_request(table, TagRow.DESCRIPTOR)
            if columns is not None:
                body["columns"] = [{"name": n, "type_name": t} for n, t in columns]
            r = httpx.post(f"{self.url}/api/2.1/unity-catalog/tables", json=body, timeout=10)
            assert r.status_code == 201, r.text

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats", timeout=5).json()  # type: ignore[no-any-return]


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    port, grpc_port = free_port(), free_port()
    env = {
        "OTBUS_EMULATOR_PORT": str(port),
        "OTBUS_EMULATOR_GRPC_PORT": str(grpc_port),
        "OTBUS_EMULATOR_DATA_DIR": str(tmp_path / "delta"),
        "OTBUS_EMULATOR_CLIENT_ID": CLIENT_ID,
        "OTBUS_EMULATOR_CLIENT_SECRET": CLIENT_SECRET,
        "OTBUS_EMULATOR_CREATE_TABLES": "false",  # as in Databricks: tables exist before streams
    }
    emu = Emulator("zerobus-emulator", "otbus_zerobus_sink.emulator", env, port)
    emu.grpc_port = grpc_port
    emu.start()
    yield emu
    emu.stop()


def sink_service(infra: Infra, emulator: Emulator, tenants: list[str], **extra: str) -> Service:
    run = uuid.uuid4().hex[:8]
    env = {
        **infra.env(),
        "NO_PROXY": "127.0.0.1,localhost",
        "OTBUS_METADATA_REFRESH_MS": "1000",
        "OTBUS_TENANTS": "|".join(tenants),
        "OTBUS_GROUP_ID": f"otbus-zerobus-sink-{run}",
        "OTBUS_INSTANCE_ID": f"test-{run}",
        "OTBUS_ZEROBUS_ENDPOINT": f"http://127.0.0.1:{emulator.grpc_port}",
        "OTBUS_WORKSPACE_URL": emulator.url,
        "OTBUS_CLIENT_ID": CLIENT_ID,
        "OTBUS_CLIENT_SECRET": CLIENT_SECRET,
        **extra,
    }
    return Service("zerobus-sink", "otbus_zerobus_sink", env, free_port())


def ensure_topics(infra: Infra, *tenants: str) -> None:
    prov = TopicProvisioner(AdminClient({"bootstrap.servers": infra.kafka_bootstrap}), partitions=3)
    prov.ensure([tags_topic(t) for t in tenants] + [dlq_topic(t) for t in tenants])


def delta_ids(emulator_dir: Path, table: str) -> list[str]:
    path = emulator_dir / "delta" / Path(*table.split("."))
    if not DeltaTable.is_deltatable(str(path)):
        return []
    return DeltaTable(str(path)).to_pyarrow_table(columns=["event_id"]).column("event_id").to_pylist()


def all_ids(root: Path, tables: list[str]) -> dict[str, list[str]]:
    return {t: delta_ids(root, t) for t in tables}


def test_records_land_in_their_tables_through_the_real_sdk(infra: Infra, emulator: Emulator, tmp_path: Path) -> None:
    a, b = new_tenant("za"), new_tenant("zb")
    ensure_topics(infra, a, b)
    tables = [f"main.{a}.tag_events", "plant.lines.press", "plant.b.events"]
    routes: dict[str, list[str]] = {t: [] for t in tables}
    emulator.create_tables(*tables)
    records = []
    for i in range(100_000):
        tenant = a if i % 2 else b
        source = "press" if i % 5 == 0 else "line-plc"
        rec = tag_record(tenant, i, source=source)
        records.append(rec)
        own = f"main.{a}.tag_events" if tenant == a else "plant.b.events"
        table = "plant.lines.press" if source == "press" else own
        routes[table].append(rec["event_id"])
    sink = sink_service(
        infra,
        emulator,
        [a, b],
        OTBUS_SOURCE_TABLES='{"press": "plant.lines.press"}',
        OTBUS_TENANT_TABLES=f'{{"{b}": "plant.b.events"}}',
    )
    with sink.start():
        produce_tag_records(infra.kafka_bootstrap, records)
        wait_until(lambda: sum(len(v) for v in all_ids(tmp_path, tables).values()) >= 100_000, 120, "100k rows")
        diag = wait_until(
            lambda: (d := httpx.get(f"{sink.url}/diagnostics", timeout=5).json())["events_sent"] >= 100_000 and d,
            30,
            "the acknowledgments counted",
        )
    landed = all_ids(tmp_path, tables)
    for table, want in routes.items():
        got = landed[table]
        assert len(got) == len(set(got)) == len(want), f"{table}: {len(got)} rows, {len(set(got))} distinct"
        assert set(got) == set(want), f"{table}: rows are not the records routed there"
    assert diag["events_sent"] == 100_000 and diag["failures"] == 0, diag
    assert {t["table"] for t in diag["targets"]} == set(tables)
    # one row read back whole: the mapping of every column
    by_id = {
        r["event_id"]: r
        for t in tables
        for r in DeltaTable(str(tmp_path / "delta" / Path(*t.split(".")))).to_pyarrow_table().to_pylist()
    }
    rec = next(r for r in records if r["event_id"] in by_id and r["value"] is True)
    row = by_id[rec["event_id"]]
    assert row["tag_path"] == rec["path"] and row["boolean_value"] is True and row["numeric_value"] == 1.0
    assert row["source_system_id"] == rec["source_id"] and row["quality"] == "GOOD" and row["quality_code"] == 0
    assert int(row["event_time"].timestamp() * 1_000_000) == rec["source_time"]
    assert (row["site"], row["area"], row["line"], row["equipment"]) == ("plant1", "pressing", "line4", "press1")
    strings = [r for r in records if r["event_id"] in by_id and isinstance(r["value"], str)]
    assert by_id[strings[0]["event_id"]]["string_value"] == strings[0]["value"]
    assert by_id[strings[0]["event_id"]]["numeric_value"] is None


def test_non_retriable_rejection_dead_letters_exactly_those_records(
    infra: Infra, emulator: Emulator, tmp_path: Path
) -> None:
    tenant = new_tenant("zr")
    ensure_topics(infra, tenant)
    emulator.faults(reject_pattern="POISONED")
    records = [tag_record(tenant, i, tag="POISONED" if i in (17, 500, 1999) else None) for i in range(3000)]
    poisoned = {r["event_id"] for r in records if r["tag_name"] == "POISONED"}
    table = f"main.{tenant}.tag_events"
    emulator.create_tables(table)
    with sink_service(infra, emulator, [tenant]).start() as sink:
        produce_tag_records(infra.kafka_bootstrap, records)
        wait_until(lambda: len(delta_ids(tmp_path, table)) >= 2997, 120, "the good records in Delta")
        dead = wait_until(
            lambda: (d := topic_records(infra, dlq_topic(tenant), "dead_letter")) and len(d) >= 3 and d, 60, "3 DLQ"
        )
        # the partition moved on: later records land too
        later = [tag_record(tenant, i) for i in range(3000, 3100)]
        produce_tag_records(infra.kafka_bootstrap, later)
        wait_until(lambda: len(delta_ids(tmp_path, table)) >= 3097, 60, "records after the rejection")
        diag = httpx.get(f"{sink.url}/diagnostics", timeout=5).json()
    ids = delta_ids(tmp_path, table)
    assert not poisoned & set(ids)
    assert set(ids) == {r["event_id"] for r in records + later} - poisoned
    assert len(dead) == 3
    dead_ids = {_CODEC.decode(d["original_value"], TAG_RECORD)["event_id"] for d in dead}
    assert dead_ids == poisoned, "the dead letters are not the rejected records"
    assert all("rejected by Zerobus" in d["reason"] and "constraint" in d["reason"] for d in dead), dead[0]
    assert diag["dead_lettered"] == 3


def test_closed_streams_and_retriable_errors_lose_nothing(infra: Infra, emulator: Emulator, tmp_path: Path) -> None:
    tenant = new_tenant("zc")
    ensure_topics(infra, tenant)
    emulator.faults(close_every_s=2.0, close_grace_s=0.5, unavailable_rate=0.01)
    table = f"main.{tenant}.tag_events"
    emulator.create_tables(table)
    produced: list[str] = []
    # small messages, so that 1% of them failing is several failures
    with sink_service(infra, emulator, [tenant], OTBUS_RECORDS_PER_MESSAGE="50").start():
        for round_ in range(10):  # about ten seconds of traffic, so several streams are closed under it
            records = [tag_record(tenant, round_ * 3000 + i) for i in range(3000)]
            produce_tag_records(infra.kafka_bootstrap, records)
            produced += [r["event_id"] for r in records]
            want = len(produced)
            wait_until(lambda n=want: len(set(delta_ids(tmp_path, table))) >= n, 60, "caught up", 0.5)
    ids = delta_ids(tmp_path, table)
    stats = emulator.stats()
    assert set(ids) == set(produced)
    dupes = sum(c - 1 for c in Counter(ids).values())
    print(f"rows {len(ids)}, distinct {len(set(ids))}, duplicates {dupes}, emulator {stats}")
    assert stats["aborted_unavailable"] > 0, "no retriable failure was injected"
    assert stats["streams_opened"] > 3, "streams were not closed and reopened"


def test_kill_9_mid_stream_and_restart_loses_nothing(infra: Infra, emulator: Emulator, tmp_path: Path) -> None:
    tenant = new_tenant("zk")
    ensure_topics(infra, tenant)
    table = f"main.{tenant}.tag_events"
    emulator.create_tables(table)
    records = [tag_record(tenant, i) for i in range(60_000)]
    sink = sink_service(infra, emulator, [tenant], OTBUS_BATCH_MAX_RECORDS="2000", OTBUS_RECORDS_PER_MESSAGE="500")
    emulator.faults(ack_delay_ms=50)  # slower acknowledgments: the kill lands with records in flight
    sink.start()
    try:
        produce_tag_records(infra.kafka_bootstrap, records)
        wait_until(lambda: len(delta_ids(tmp_path, table)) >= 10_000, 60, "the sink under way")
        sink.kill9()
        at_kill = len(delta_ids(tmp_path, table))
        assert at_kill < len(records), "the sink finished before it was killed; the test proves nothing"
        emulator.faults()
        sink.start()
        wait_until(lambda: len(set(delta_ids(tmp_path, table))) >= len(records), 120, "every record after restart")
    finally:
        sink.stop()
    ids = delta_ids(tmp_path, table)
    assert set(ids) == {r["event_id"] for r in records}
    print(f"killed at {at_kill} rows; {len(ids)} rows for {len(records)} records ({len(ids) - len(records)} resent)")


def test_a_table_zerobus_refuses_holds_the_batch_and_readiness_says_why(
    infra: Infra, emulator: Emulator, tmp_path: Path
) -> None:
    tenant = new_tenant("zn")
    ensure_topics(infra, tenant)
    table = f"main.{tenant}.tag_events"
    emulator.create_tables(table)  # the catalog knows it, the ingest service answers NOT_FOUND
    emulator.faults(table_status={table: "NOT_FOUND"})
    records = [tag_record(tenant, i) for i in range(500)]
    sink = sink_service(infra, emulator, [tenant], OTBUS_BREAKER_FAILURES="2", OTBUS_BREAKER_OPEN_S="2")
    with sink.start(wait_ready=False):
        produce_tag_records(infra.kafka_bootstrap, records)

        def unready() -> dict[str, Any] | None:
            r = httpx.get(f"{sink.url}/readyz", timeout=5)
            return r.json() if r.status_code == 503 and not r.json()["checks"]["zerobus"]["ok"] else None

        body = wait_until(unready, 60, "/readyz naming the refused table")
        assert table in body["checks"]["zerobus"]["error"]
        assert "not found" in body["checks"]["zerobus"]["error"].lower()
        assert delta_ids(tmp_path, table) == []
        emulator.faults()  # the operator creates the table
        wait_until(lambda: len(delta_ids(tmp_path, table)) >= 500, 90, "the held records after the fix")
        wait_until(lambda: httpx.get(f"{sink.url}/readyz", timeout=5).status_code == 200, 30, "ready again")
    assert sorted(delta_ids(tmp_path, table)) == sorted(r["event_id"] for r in records)


def test_the_catalog_is_asked_before_the_first_stream(infra: Infra, emulator: Emulator, tmp_path: Path) -> None:
    """A missing table and a column of the wrong type are named, with the DDL; fixed, the records flow."""
    tenant = new_tenant("zu")
    ensure_topics(infra, tenant)
    missing = f"main.{tenant}.tag_events"
    wrong = f"main.{tenant}.wrong_types"
    records = [tag_record(tenant, i, source="plc-a" if i % 2 else "plc-b") for i in range(400)]
    good = [(c.name, c.delta_type) for c in row_columns(TagRow.DESCRIPTOR)]
    emulator.create_tables(wrong, columns=[(n, "STRING" if n == "event_time" else t) for n, t in good])
    sink = sink_service(infra, emulator, [tenant], OTBUS_SOURCE_TABLES=f'{{"plc-b": "{wrong}"}}')
    with sink.start(wait_ready=False):
        produce_tag_records(infra.kafka_bootstrap, records)

        def refused() -> str | None:
            r = httpx.get(f"{sink.url}/readyz", timeout=5)
            error = r.json()["checks"]["zerobus"].get("error", "")
            return error if missing in error and wrong in error else None

        error = wait_until(refused, 60, "/readyz naming both tables")
        assert "does not exist; create it (DDL: GET /api/v1/ddl" in error
        assert "column event_time is STRING, the row proto writes TIMESTAMP" in error
        assert emulator.stats()["streams_opened"] == 0, "a stream was opened although the catalog said no"
        emulator.create_tables(missing)
        shutil.rmtree(tmp_path / "delta" / "main" / tenant / "wrong_types")
        emulator.create_tables(wrong)
        wait_until(lambda: len(delta_ids(tmp_path, missing)) + len(delta_ids(tmp_path, wrong)) >= 400, 90, "all rows")
    assert sorted(delta_ids(tmp_path, wrong)) == sorted(r["event_id"] for r in records if r["source_id"] == "plc-b")
    assert sorted(delta_ids(tmp_path, missing)) == sorted(r["event_id"] for r in records if r["source_id"] == "plc-a")


def test_a_waiting_table_does_not_make_the_other_tables_of_its_batch_write_twice(
    infra: Infra, emulator: Emulator, tmp_path: Path
) -> None:
    """One table refused, the batch retried again and again: the table that took its part keeps one copy."""
    tenant = new_tenant("zw")
    ensure_topics(infra, tenant)
    good, held = f"main.{tenant}.tag_events", f"main.{tenant}.held"
    emulator.create_tables(good, held)
    emulator.faults(table_status={held: "PERMISSION_DENIED"})
    records = [tag_record(tenant, i, source="plc-a" if i % 2 else "plc-b") for i in range(600)]
    sink = sink_service(
        infra, emulator, [tenant], OTBUS_SOURCE_TABLES=f'{{"plc-b": "{held}"}}', OTBUS_BREAKER_OPEN_S="2"
    )
    with sink.start(wait_ready=False):
        produce_tag_records(infra.kafka_bootstrap, records)

        def retried() -> dict[str, Any] | None:
            d = httpx.get(f"{sink.url}/diagnostics", timeout=5).json()
            failures = {t["table"]: t["failures"] for t in d["targets"]}
            return d if failures.get(held, 0) >= 3 and d["resends_skipped"] >= 300 else None

        diag = wait_until(retried, 90, "three refusals of the held table, the good one's part skipped on retry")
        assert sorted(delta_ids(tmp_path, good)) == sorted(r["event_id"] for r in records if r["source_id"] == "plc-a")
        assert delta_ids(tmp_path, held) == []
        metrics = httpx.get(f"{sink.url}/metrics", timeout=5).text
        assert f'otbus_zerobus_resends_skipped_records_total{{table="{good}"}}' in metrics
        emulator.faults()
        wait_until(lambda: len(delta_ids(tmp_path, held)) >= 300, 90, "the held table's part after the fix")
        wait_until(lambda: httpx.get(f"{sink.url}/readyz", timeout=5).status_code == 200, 30, "ready again")
    assert diag["events_sent"] == 300
    for table, source in ((good, "plc-a"), (held, "plc-b")):
        ids = delta_ids(tmp_path, table)
        assert sorted(ids) == sorted(r["event_id"] for r in records if r["source_id"] == source), table
