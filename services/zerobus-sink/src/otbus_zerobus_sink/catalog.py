"""Asks the workspace's Unity Catalog whether a target table agrees with the row proto.

Done once per table before its first stream, when the workspace can be asked (a workspace
URL and OAuth credentials). A missing table or a column of another type is reported with the
table, the column and the DDL to create the table; a catalog that cannot be asked (no
permission, unreachable) is logged and the stream is opened anyway: Zerobus has the last word.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from otbus_zerobus_sink.rows import TagRow
from otbus_zerobus_sink.rowschema import columns, ddl, sql_type

__all__ = ["CatalogCheck", "TableMismatch"]

log = logging.getLogger(__name__)


class TableMismatch(Exception):
    """The table is missing or has a column the row proto cannot write."""


class CatalogCheck:
    def __init__(self, workspace_url: str, client_id: str, client_secret: str, timeout: float = 10.0) -> None:
        self.base = workspace_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.timeout = timeout
        self._token: str | None = None

    def _bearer(self, client: httpx.Client) -> str:
        if self._token is None:
            r = client.post(
                f"{self.base}/oidc/v1/token",
                data={"grant_type": "client_credentials", "scope": "all-apis"},
                auth=(self.client_id, self.client_secret),
            )
            r.raise_for_status()
            self._token = str(r.json()["access_token"])
        return self._token

    def check(self, table: str) -> None:
        """Raise TableMismatch when the catalog says the table cannot take our rows."""
        try:
            with httpx.Client(timeout=self.timeout) as client:
                token = self._bearer(client)
                r = client.get(
                    f"{self.base}/api/2.1/unity-catalog/tables/{table}",
                    headers={"Authorization": f"Bearer {token}"},
                )
        except (httpx.HTTPError, KeyError, ValueError) as e:
            log.warning("cannot ask the catalog about %s (%s); opening the stream anyway", table, e)
            return
        if r.status_code == 404:
            log.warning("table %s does not exist; create it with:\n%s", table, ddl(table, TagRow.DESCRIPTOR))
            raise TableMismatch(
                f"table {table} does not exist; create it (DDL: GET /api/v1/ddl?table={table}, or "
                f"python -m otbus_zerobus_sink ddl {table})"
            )
        if r.status_code in (401, 403):
            self._token = None
            log.warning("the catalog refused to describe %s (HTTP %d); opening the stream anyway", table, r.status_code)
            return
        if r.status_code != 200:
            log.warning("the catalog answered HTTP %d for %s; opening the stream anyway", r.status_code, table)
            return
        try:
            found = r.json().get("columns") or []
        except (ValueError, AttributeError) as e:
            log.warning("the catalog's answer for %s is not a table (%s); opening the stream anyway", table, e)
            return
        mismatch = compare(table, found)
        if mismatch:
            raise TableMismatch(mismatch)
        log.info("table %s agrees with the row proto", table)


def compare(table: str, catalog_columns: list[dict[str, Any]]) -> str | None:
    """The first disagreement between the table's columns and the row proto, or None."""
    have = {str(c.get("name", "")).lower(): sql_type(str(c.get("type_name", ""))) for c in catalog_columns}
    for col in columns(TagRow.DESCRIPTOR):
        got = have.get(col.name.lower())
        if got is None:
            return f"table {table} has no column {col.name} ({col.delta_type}); add it or recreate the table"
        if got != col.delta_type:
            return f"table {table} column {col.name} is {got}, the row proto writes {col.delta_type}"
    return None
