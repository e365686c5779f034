"""Run ingest-http: `python -m otbus_ingest_http` (or `otbus-ingest-http`)."""

from __future__ import annotations

import sys

import uvicorn

from otbus_core.exceptions import ConfigError
from otbus_core.logs import configure_logging
from otbus_core.settings import load_settings
from otbus_ingest_http.app import create_app
from otbus_ingest_http.config import IngestHttpSettings


def main() -> int:
    try:
        settings = load_settings(IngestHttpSettings)
        configure_logging(settings.service_name, settings.log_level, settings.log_json)
        app = create_app(settings)
    except ConfigError as e:
        print(f"otbus-ingest-http: {e}", file=sys.stderr)  # noqa: T201
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
