"""event-store: consumer + query API in one process (the consumer can be turned off)."""

import logging
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from sqlalchemy import create_engine

from otbus_core.auth import TokenMap
from otbus_core.codec import AvroCodec
from otbus_core.kafka import admin_client, kafka_reachable
from otbus_core.metrics import PrometheusSensor
from otbus_core.ops import ops_router
from otbus_core.runner import ConsumerRunner, RunnerConfig
from otbus_core.service import start_worker
from otbus_core.topics import tags_topics_pattern, tenant_of_topic
from otbus_event_store.config import EventStoreSettings
from otbus_event_store.handler import STAGE, StoreHandler
from otbus_event_store.migrate import ensure_partitions, migrate, purge_expired
from otbus_event_store.query import EventFilter, EventQueries, decode_cursor
from otbus_event_store.writer import EventWriter

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_app(settings: EventStoreSettings) -> FastAPI:
    tokens = settings.token_map()
    codec = AvroCodec(schema_registry_url=settings.schema_registry_url)
    admin = admin_client(settings)
    engine = create_engine(
        _sqlalchemy_url(settings.database_url),
        pool_size=settings.database_pool_size,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={"options": f"-c statement_timeout={settings.query_timeout_ms}"},
    )
    runner: ConsumerRunner | None = None
    if settings.consume:
        config = RunnerConfig(
            stage=STAGE,
            group_id=settings.group_id,
            topics=[tags_topics_pattern(settings.tenants), *settings.extra_topics],
            batch_size=settings.batch_size,
            batch_timeout=settings.batch_timeout_ms / 1000,
            instance_id=settings.instance_id or socket.gethostname(),
        )
        writer = EventWriter(settings.database_url)
        runner = ConsumerRunner(settings, config, StoreHandler(codec, writer), codec, sensor=PrometheusSensor(STAGE))
    stop_maintenance = threading.Event()

    def maintenance() -> None:
        while not stop_maintenance.wait(3600):
            try:
                ensure_partitions(settings.database_url, settings.partitions_ahead_days)
                purge_expired(settings.database_url, settings.retention_days)
            except Exception:
                log.exception("partition maintenance failed; trying again in an hour")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(settings.database_url)
        ensure_partitions(settings.database_url, settings.partitions_ahead_days)
        app.state.queries = EventQueries(engine)
        start_worker(maintenance, "partition-maintenance")
        consumer = start_worker(runner.run, "event-store-consumer") if runner is not None else None
        try:
            yield
        finally:
            stop_maintenance.set()
            if runner is not None and consumer is not None:
                runner.stop()
                consumer.join(timeout=60)
            engine.dispose()

    app = FastAPI(
        title="otbus event store",
        summary="Every otbus event in PostgreSQL: query by type, subject, source, correlation and time",
        lifespan=lifespan,
    )

    def db_check() -> None:
        app.state.queries.ping()

    checks: dict[str, Any] = {"database": db_check}
    if runner is not None:
        checks["kafka"] = lambda: kafka_reachable(admin)
        checks["consumer"] = runner.check_ready
    app.include_router(ops_router(checks, alive=runner.healthy if runner else lambda: True))

    async def tenant_of(authorization: Annotated[str | None, Header()] = None) -> str:
        tenant = tokens.tenant_for(TokenMap.from_request_parts(authorization, None, None))
        if tenant is None:
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
        return tenant

    Tenant = Annotated[str, Depends(tenant_of)]
    api = APIRouter(prefix="/api/v1", tags=["events"])

    @api.get("/events", summary="Events of the caller's tenant, newest first by default, keyset-paginated")
    def events(
        request: Request,
        tenant: Tenant,
        type: Annotated[list[str] | None, Query(description="Event type(s), e.g. otbus.ot.tag.v1")] = None,
        subject_prefix: Annotated[str | None, Query(max_length=1024, description="ISA-95 path prefix")] = None,
        source: Annotated[str | None, Query(max_length=512)] = None,
        correlation_id: Annotated[str | None, Query(max_length=256)] = None,
        since: Annotated[datetime | None, Query(description="Inclusive lower bound of event time")] = None,
        until: Annotated[datetime | None, Query(description="Exclusive upper bound of event time")] = None,
        order: Literal["asc", "desc"] = "desc",
        limit: Annotated[int, Query(ge=1)] = 100,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> dict[str, Any]:
        if limit > settings.max_page_size:
            raise HTTPException(422, f"limit: at most {settings.max_page_size}")
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise HTTPException(422, f"{name}: give a time zone (e.g. 2026-01-01T00:00:00Z)")
        try:
            decoded = decode_cursor(cursor) if cursor else None
        except ValueError as e:
            raise HTTPException(422, f"cursor: {e}") from None
        f = EventFilter(
            types=tuple(type or ()),
            subject_prefix=subject_prefix,
            source=source,
            correlation_id=correlation_id,
            since=since,
            until=until,
            order=order,
            cursor=decoded,
            limit=limit,
        )
        rows, next_cursor = request.app.state.queries.events(tenant, f)
        return {"events": rows, "count": len(rows), "next_cursor": next_cursor}

    @api.get("/statistics", summary="Counts by type and events per minute over a time range")
    def statistics(
        request: Request,
        tenant: Tenant,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        until = until or datetime.now(UTC)
        since = since or until - timedelta(hours=1)
        if since.tzinfo is None or until.tzinfo is None:
            raise HTTPException(422, "since/until: give a time zone")
        if until <= since:
            raise HTTPException(422, "until: must be after since")
        if until - since > timedelta(hours=settings.max_statistics_range_hours):
            raise HTTPException(422, f"since: the range may span at most {settings.max_statistics_range_hours} hours")
        result: dict[str, Any] = request.app.state.queries.statistics(tenant, since, until)
        return result

    @api.get("/status", summary="Consumer lag and last offsets of the caller's topics, and the database")
    def status(request: Request, tenant: Tenant) -> dict[str, Any]:
        try:
            db: dict[str, Any] = {"ok": True, "latency_ms": round(request.app.state.queries.ping(), 2)}
        except Exception as e:
            db = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
        consumer: dict[str, Any] = {"enabled": runner is not None}
        if runner is not None:
            mine = [p for p in runner.lag() if _tenant_or_none(p["topic"]) == tenant]
            consumer.update(
                group=settings.group_id,
                partitions=mine,
                lag=sum(p["lag"] or 0 for p in mine),
                failing=runner.failing_since is not None,
            )
        return {"database": db, "consumer": consumer}

    app.include_router(api)
    return app


def _tenant_or_none(topic: str) -> str | None:
    try:
        return tenant_of_topic(topic)
    except ValueError:
        return None
