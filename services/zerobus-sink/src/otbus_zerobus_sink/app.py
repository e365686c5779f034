"""zerobus-sink: tags topics -> Zerobus -> Delta tables; ops endpoints and /diagnostics."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import PlainTextResponse

from otbus_core.codec import AvroCodec
from otbus_core.kafka import admin_client, kafka_reachable
from otbus_core.metrics import PrometheusSensor
from otbus_core.ops import ops_router
from otbus_core.runner import ConsumerRunner, RunnerConfig
from otbus_core.service import start_worker
from otbus_core.topics import tags_topics_pattern
from otbus_zerobus_sink.config import TABLE_PATTERN, ZerobusSinkSettings
from otbus_zerobus_sink.emulator.server import Emulator, EmulatorCore
from otbus_zerobus_sink.handler import STAGE, SinkHandler
from otbus_zerobus_sink.rows import TagRow
from otbus_zerobus_sink.rowschema import ddl
from otbus_zerobus_sink.targets import Router, Targets

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_NOWHERE = "http://127.0.0.1:9"  # the embedded emulator needs no workspace (no OAuth, no catalog)


def create_app(settings: ZerobusSinkSettings) -> FastAPI:
    codec = AvroCodec(schema_registry_url=settings.schema_registry_url)
    admin = admin_client(settings)
    emulator: Emulator | None = None
    if settings.embedded_emulator:
        core = EmulatorCore(settings.data_dir, commit_interval=settings.emulator_commit_interval_ms / 1000)
        emulator = Emulator(core)
        endpoint = emulator.start()
        log.info("no OTBUS_ZEROBUS_ENDPOINT: writing local Delta tables under %s", settings.data_dir.resolve())
    else:
        assert settings.zerobus_endpoint is not None  # noqa: S101 - not embedded means set
        endpoint = settings.zerobus_endpoint
        if "://" not in endpoint:
            endpoint = f"https://{endpoint}"
    targets = Targets(settings, endpoint, settings.workspace_url or _NOWHERE)
    handler = SinkHandler(codec, targets, Router(settings), settings.records_per_message)
    config = RunnerConfig(
        stage=STAGE,
        group_id=settings.group_id,
        topics=[tags_topics_pattern(settings.tenants)],
        batch_size=settings.batch_max_records,
        batch_timeout=0.1,
        linger=settings.batch_linger_ms / 1000,
        instance_id=settings.instance_id or socket.gethostname(),
        # a batch may wait out acknowledgments, the SDK's recovery and the narrowing-down of a
        # rejection; the group must not take the partitions away meanwhile
        consumer_overrides={"max.poll.interval.ms": 900_000},
    )
    runner = ConsumerRunner(settings, config, handler, codec, sensor=PrometheusSensor(STAGE))
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        consumer = start_worker(runner.run, "zerobus-sink-consumer")
        try:
            yield
        finally:
            runner.stop()
            # the batch in hand may wait out an acknowledgment and the SDK's recovery
            consumer.join(timeout=settings.ack_timeout_s + 60)
            if consumer.is_alive():
                log.warning("the consumer did not stop in time; leaving its streams to the process exit")
            else:
                handler.close()
            if emulator is not None:
                emulator.stop()

    app = FastAPI(
        title="otbus zerobus-sink",
        summary="ISA-95 tag records into Databricks Delta tables through Zerobus",
        lifespan=lifespan,
    )

    def zerobus_check() -> None:
        bad = [
            f"{t['table']}: {t['stream_state']} ({(t['last_error'] or '')[:200]})"
            for t in targets.snapshot()
            if t["stream_state"] in ("CIRCUIT_OPEN", "REFUSED")
        ]
        if bad:
            raise RuntimeError("; ".join(bad))

    checks: dict[str, Any] = {
        "kafka": lambda: kafka_reachable(admin),
        "consumer": runner.check_ready,
        "zerobus": zerobus_check,
    }
    app.include_router(ops_router(checks, alive=runner.healthy))

    @app.get("/diagnostics", summary="What the sink is doing: targets, streams, counts, lag")
    def diagnostics() -> dict[str, Any]:
        tables = targets.snapshot()
        lag = runner.lag()
        last = [t["last_successful_send"] for t in tables if t["last_successful_send"]]
        return {
            "enabled": True,
            "connected": any(t["stream_state"] == "OPENED" for t in tables),
            "endpoint": endpoint,
            "embedded_emulator": emulator is not None,
            "data_dir": str(settings.data_dir.resolve()) if emulator is not None else None,
            "uptime_s": round(time.time() - started, 1),
            "events_sent": sum(t["records_sent"] for t in tables),
            "batches_sent": sum(t["batches_sent"] for t in tables),
            "failures": sum(t["failures"] for t in tables),
            "dead_lettered": sum(t["dead_lettered"] for t in tables),
            "resends_skipped": handler.skipped,
            "last_successful_send": max(last) if last else None,
            "lag": sum(p["lag"] or 0 for p in lag),
            "partitions": lag,
            "targets": tables,
            "emulator": emulator.core.stats() if emulator is not None else None,
        }

    @app.get("/api/v1/ddl", response_class=PlainTextResponse, summary="CREATE TABLE for a target table")
    def table_ddl(table: str = Query(..., max_length=400, description="catalog.schema.table")) -> str:
        if not TABLE_PATTERN.match(table):
            raise HTTPException(422, "table: not a three-part name catalog.schema.table")
        return ddl(table, TagRow.DESCRIPTOR)

    return app
