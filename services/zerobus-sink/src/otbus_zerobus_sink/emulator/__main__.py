"""Run the Zerobus emulator on its own: `python -m otbus_zerobus_sink.emulator`.

gRPC (the Zerobus protocol) on OTBUS_EMULATOR_GRPC_PORT; HTTP on OTBUS_EMULATOR_PORT with
/healthz /readyz /metrics, the workspace's OAuth token endpoint (/oidc/v1/token), a Unity
Catalog style table lookup, /stats and /control/faults (what to get wrong, for tests).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Form, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from otbus_core.ops import ops_router
from otbus_core.service import configure
from otbus_core.settings import OtbusSettings
from otbus_zerobus_sink.emulator.delta import create_table, table_path
from otbus_zerobus_sink.emulator.server import Emulator, EmulatorCore, Faults

log = logging.getLogger(__name__)


class EmulatorSettings(OtbusSettings):
    model_config = SettingsConfigDict(env_prefix="OTBUS_EMULATOR_", frozen=True, extra="ignore")

    service_name: str = "zerobus-emulator"
    port: int = 8089
    """HTTP: OAuth token endpoint, table lookup, stats, fault control, ops endpoints."""
    grpc_port: int = 50051
    data_dir: Path = Path(".otbus/delta")
    commit_interval_ms: int = Field(100, ge=1)
    """Rows are committed to Delta (and then acknowledged) at least this often."""
    create_tables: bool = True
    """Create a missing table on its first stream (off: NOT_FOUND, as Databricks answers)."""
    client_id: str | None = None
    client_secret: SecretStr | None = None
    """When set, streams need a bearer token from /oidc/v1/token for these credentials."""


class NewColumn(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type_name: str


class NewTable(BaseModel):
    """The part of Unity Catalog's create-table request the emulator uses."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    catalog_name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    schema_name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    columns: list[NewColumn] = Field(min_length=1)


def create_http(core: EmulatorCore) -> FastAPI:
    app = FastAPI(title="otbus Zerobus emulator")
    app.include_router(ops_router({}))

    @app.post("/oidc/v1/token")
    def token(
        grant_type: Annotated[str, Form()],
        authorization: Annotated[str | None, Header()] = None,
        client_id: Annotated[str | None, Form()] = None,
        client_secret: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        if grant_type != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if authorization and authorization.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(authorization[6:]).decode().partition(":")
            except ValueError:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
        issued = core.issue_token(client_id or "", client_secret or "")
        if issued is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        return JSONResponse({"access_token": issued, "token_type": "Bearer", "expires_in": 3600})

    @app.get("/api/2.1/unity-catalog/tables/{full_name}")
    def table(full_name: str) -> dict[str, Any]:
        cols = core.describe(full_name)
        if cols is None:
            raise HTTPException(404, {"error_code": "TABLE_DOES_NOT_EXIST", "message": f"{full_name} not found"})
        catalog, schema, name = full_name.split(".")
        return {
            "full_name": full_name,
            "catalog_name": catalog,
            "schema_name": schema,
            "name": name,
            "data_source_format": "DELTA",
            "columns": [
                {"name": n, "type_text": t.lower(), "type_name": t, "position": i, "nullable": True}
                for i, (n, t) in enumerate(cols)
            ],
        }

    @app.post("/api/2.1/unity-catalog/tables", status_code=201)
    def create(body: NewTable) -> dict[str, Any]:
        full_name = f"{body.catalog_name}.{body.schema_name}.{body.name}"
        if core.describe(full_name) is not None:
            raise HTTPException(409, {"error_code": "TABLE_ALREADY_EXISTS", "message": f"{full_name} exists"})
        try:
            create_table(table_path(core.data_dir, full_name), [(c.name, c.type_name) for c in body.columns])
        except ValueError as e:
            raise HTTPException(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": str(e)}) from None
        return table(full_name)

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return core.stats()

    @app.get("/control/faults")
    def get_faults() -> Faults:
        return core.faults

    @app.put("/control/faults")
    def put_faults(faults: Faults) -> Faults:
        core.faults = faults
        log.info("faults now %s", faults.model_dump(exclude_defaults=True))
        return faults

    return app


async def serve(settings: EmulatorSettings, core: EmulatorCore) -> None:
    emulator = Emulator(core, settings.host, settings.grpc_port)
    await emulator.start_async()
    config = uvicorn.Config(
        create_http(core), host=settings.host, port=settings.port, log_config=None, access_log=False, loop="none"
    )
    try:
        await uvicorn.Server(config).serve()  # returns on SIGTERM / SIGINT
    finally:
        await emulator.stop_async()


def main() -> int:
    def build(s: EmulatorSettings) -> EmulatorCore:
        secret = s.client_secret.get_secret_value() if s.client_secret else None
        return EmulatorCore(
            s.data_dir,
            commit_interval=s.commit_interval_ms / 1000,
            create_tables=s.create_tables,
            client_id=s.client_id,
            client_secret=secret,
        )

    settings, core = configure("otbus-zerobus-emulator", EmulatorSettings, build)
    asyncio.run(serve(settings, core))
    return 0


if __name__ == "__main__":
    sys.exit(main())
