"""Run the normalizer: `python -m otbus_normalizer` (or `otbus-normalizer`)."""

from __future__ import annotations

import logging
import os
import socket
import sys

from fastapi import FastAPI

from otbus_core.codec import AvroCodec
from otbus_core.kafka import admin_client, kafka_reachable
from otbus_core.metrics import PrometheusSensor
from otbus_core.ops import OpsServer, ops_router
from otbus_core.runner import ConsumerRunner, RunnerConfig
from otbus_core.service import configure, run_worker
from otbus_core.topics import raw_topics_pattern
from otbus_normalizer.config import NormalizerSettings
from otbus_normalizer.handler import STAGE, NormalizerHandler
from otbus_normalizer.mapping import PathTemplate, TagMapper

log = logging.getLogger("otbus_normalizer")


def build(settings: NormalizerSettings) -> ConsumerRunner:
    mapper = TagMapper(PathTemplate(settings.path_template), settings.default_context, settings.source_contexts())
    codec = AvroCodec(schema_registry_url=settings.schema_registry_url)
    config = RunnerConfig(
        stage=STAGE,
        group_id=settings.group_id,
        topics=[raw_topics_pattern(settings.tenants)],
        transactional=True,
        batch_size=settings.batch_size,
        batch_timeout=settings.batch_timeout_ms / 1000,
        instance_id=settings.instance_id or socket.gethostname(),
    )
    return ConsumerRunner(settings, config, NormalizerHandler(codec, mapper), codec, sensor=PrometheusSensor(STAGE))


def main() -> int:
    settings, runner = configure("otbus-normalizer", NormalizerSettings, build)
    admin = admin_client(settings)
    app = FastAPI(title="otbus normalizer", docs_url=None, redoc_url=None)
    checks = {"kafka": lambda: kafka_reachable(admin), "consumer": runner.check_ready}
    app.include_router(ops_router(checks, alive=runner.healthy))
    ops = OpsServer(app, settings.host, settings.port)
    ops.start()
    log.info("normalizer started; ops on http://%s:%d", settings.host, settings.port)
    try:
        code = run_worker(runner.run, runner.stop, "normalizer-consumer")
    finally:
        ops.stop()
    if code:
        log.error("normalizer stopped uncleanly (exit %d): an open transaction is aborted by the broker", code)
        os._exit(code)  # the stuck thread would hold up a normal exit
    log.info("normalizer stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
