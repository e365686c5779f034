"""The Avro schemas in `schemas/avro/<name>/v<N>.avsc`, loaded at run time (never copied into code)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from otbus_core.exceptions import ConfigError

__all__ = [
    "TAG_RECORD_LAYOUT",
    "AvroSchema",
    "SchemaCatalog",
    "catalog",
    "require_layout",
    "schemas_root",
    "strip_logical_types",
]

RAW_READING_BATCH = "raw_reading_batch"
TAG_RECORD = "tag_record"
DEAD_LETTER = "dead_letter"

TAG_RECORD_LAYOUT: tuple[tuple[str, Any], ...] = (
    ("event_id", "string"),
    ("tenant", "string"),
    ("path", "string"),
    ("site", "string"),
    ("area", "string"),
    ("line", "string"),
    ("equipment", "string"),
    ("signal_type", "string"),
    ("tag_name", "string"),
    ("value", ["null", "boolean", "long", "double", "string"]),
    ("data_type", "string"),
    ("unit", ["null", "string"]),
    ("quality", "string"),
    ("quality_code", ["null", "long"]),
    ("source_time", "long"),
    ("ingest_time", "long"),
    ("source_id", "string"),
    ("protocol", "string"),
    ("source_tag", "string"),
    ("raw_event_id", "string"),
)
"""(name, type without logical types) of every field of the tag record, in order, as the code
that writes or reads its bytes itself (the normalizer's and the event store's fast paths)
expects it: a schema change must come here too, and `require_layout` says so at start-up."""


def schemas_root() -> Path:
    """`OTBUS_SCHEMAS_DIR`, else the nearest `schemas/` above this package (the repo checkout)."""
    env = os.environ.get("OTBUS_SCHEMAS_DIR")
    if env:
        root = Path(env)
        if not (root / "avro").is_dir():
            raise ConfigError(f"OTBUS_SCHEMAS_DIR={env!r} has no avro/ directory")
        return root
    for parent in Path(__file__).resolve().parents:
        if (parent / "schemas" / "avro").is_dir():
            return parent / "schemas"
    raise ConfigError("schemas/avro not found; set OTBUS_SCHEMAS_DIR to the schemas directory")


@dataclass(frozen=True, slots=True)
class AvroSchema:
    key: str  # directory name, e.g. "tag_record"
    version: int
    full_name: str  # e.g. "otbus.ot.tags.TagRecord"
    source: str  # the .avsc text as written
    parsed: Any  # fastavro parsed schema, as written (logical types included)
    fast: Any  # the same without logical type annotations: ints and strings, no conversions
    fingerprint: bytes  # CRC-64-AVRO of the parsing canonical form, little-endian

    @property
    def uri(self) -> str:
        return f"urn:otbus:avro:{self.full_name}:v{self.version}"


class SchemaCatalog:
    """Every version of every schema, by key and by fingerprint."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_key: dict[str, list[AvroSchema]] = {}
        self._by_fp: dict[bytes, AvroSchema] = {}
        for path in sorted((root / "avro").glob("*/v*.avsc")):
            s = self._load(path)
            self._by_key.setdefault(s.key, []).append(s)
            self._by_fp[s.fingerprint] = s
        for versions in self._by_key.values():
            versions.sort(key=lambda s: s.version)
        if not self._by_key:
            raise ConfigError(f"no schemas under {root / 'avro'}")

    @staticmethod
    def _load(path: Path) -> AvroSchema:
        text = path.read_text()
        doc = json.loads(text)
        parsed = parse_schema(doc)
        canonical = to_parsing_canonical_form(doc)
        fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        version = int(path.stem.removeprefix("v"))
        full_name = f"{doc['namespace']}.{doc['name']}"
        fast = parse_schema(strip_logical_types(doc))
        return AvroSchema(path.parent.name, version, full_name, text, parsed, fast, fp)

    def latest(self, key: str) -> AvroSchema:
        try:
            return self._by_key[key][-1]
        except KeyError:
            raise ConfigError(f"no schema {key!r} under {self.root / 'avro'}") from None

    def versions(self, key: str) -> list[AvroSchema]:
        return list(self._by_key.get(key, []))

    def by_fingerprint(self, fp: bytes) -> AvroSchema | None:
        return self._by_fp.get(fp)

    def names(self) -> list[str]:
        return sorted(self._by_key)

    def fingerprints(self) -> dict[str, str]:
        """`<name>/v<N>` -> fingerprint hex, as pinned in schemas/avro/fingerprints.json."""
        return {f"{k}/v{s.version}": s.fingerprint.hex() for k in self.names() for s in self._by_key[k]}


def require_layout(schema: AvroSchema, layout: tuple[tuple[str, Any], ...], user: str) -> None:
    """ValueError unless `schema`'s fields are `layout`: (name, type without logical types)."""
    fields = strip_logical_types(json.loads(schema.source))["fields"]
    found = tuple((f["name"], f["type"]) for f in fields)
    if found != layout:
        raise ValueError(f"{schema.full_name} is not the layout {user} expects: {found}")


def strip_logical_types(schema: Any) -> Any:
    """The schema without `logicalType` annotations.

    Logical types do not change the binary encoding (and the parsing canonical form, hence
    the fingerprint, leaves them out), so our services read and write with this version:
    timestamps stay integer microseconds and UUIDs stay strings, with no conversion per field.
    Consumers that want datetimes and UUID objects read with the schema as published.
    """
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "logicalType" in schema and schema.get("type") in ("int", "long", "string", "bytes", "fixed"):
        base = {k: v for k, v in schema.items() if k != "logicalType"}
        return base["type"] if set(base) == {"type"} else base
    out = dict(schema)
    if "fields" in out:
        out["fields"] = [{**f, "type": strip_logical_types(f["type"])} for f in out["fields"]]
    for key in ("items", "values", "type"):
        if key in out and isinstance(out[key], dict | list):
            out[key] = strip_logical_types(out[key])
    return out


@cache
def catalog() -> SchemaCatalog:
    return SchemaCatalog(schemas_root())


if __name__ == "__main__":  # print the fingerprints to pin in schemas/avro/fingerprints.json
    print(json.dumps(catalog().fingerprints(), indent=2))  # noqa: T201
