"""Run the service: `python -m otbus_ingest_opcua` (or `otbus-ingest-opcua`)."""

import sys
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from otbus_core.adapter import AdapterRuntime, main_adapter
from otbus_core.sources import SourceStore
from otbus_ingest_opcua.config import OpcUaSettings, OpcUaSource
from otbus_ingest_opcua.discovery import Discovery
from otbus_ingest_opcua.source import OpcUaReader


def build(settings: OpcUaSettings) -> AdapterRuntime[OpcUaSource]:
    store = SourceStore(OpcUaSource, ["opcua"], settings.sources_file, settings.home)
    return AdapterRuntime(settings, store, lambda cfg: OpcUaReader(cfg, settings.home))


def routes(app: FastAPI, runtime: AdapterRuntime[Any]) -> None:
    settings = runtime.settings
    assert isinstance(settings, OpcUaSettings)  # noqa: S101 - wiring invariant
    discovery = Discovery(settings.discovery_targets)

    async def servers(protocol: str | None = None) -> JSONResponse:
        if protocol not in (None, "opcua"):
            return JSONResponse({"servers": [], "count": 0})
        return JSONResponse(
            {"servers": discovery.servers, "count": len(discovery.servers), "last_scan": discovery.last_scan}
        )

    async def scan() -> JSONResponse:
        if not discovery.targets:
            return JSONResponse({"detail": "no discovery targets: set OTBUS_DISCOVERY_TARGETS (host:port list)"}, 409)
        started = discovery.start_scan()
        message = "Discovery scan started" if started else "A discovery scan is running"
        return JSONResponse({"status": "ok", "message": message}, 202)

    for prefix in ("/api/v1", "/api"):
        app.add_api_route(f"{prefix}/discovery/servers", servers, methods=["GET"])
        app.add_api_route(f"{prefix}/discovery/scan", scan, methods=["POST"])


def main() -> int:
    return main_adapter("otbus-ingest-opcua", OpcUaSettings, build, "otbus ingest-opcua", routes)


if __name__ == "__main__":
    sys.exit(main())
