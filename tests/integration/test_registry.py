"""The Confluent wire format against a real schema registry (Apicurio, Confluent-compatible API)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
from collections.abc import Iterator

import fastavro
import httpx
import pytest

from otbus_core.codec import AvroCodec
from otbus_core.ids import uuid7
from tests.support import REPO

pytestmark = pytest.mark.integration

REGISTRY = REPO / "deploy" / "local" / "registry" / "registry.sh"


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    port = os.environ.get("OTBUS_REGISTRY_PORT", "18081")
    proc = subprocess.run(["bash", str(REGISTRY), "start"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"registry did not start:\n{proc.stdout}\n{proc.stderr}")
    yield f"http://127.0.0.1:{port}/apis/ccompat/v7"


def test_confluent_wire_format_roundtrip_and_stranger_decode(registry_url: str, tenant: str) -> None:
    topic = f"{tenant}.ot.dlq.v1"
    writer = AvroCodec(schema_registry_url=registry_url)
    reader = AvroCodec(schema_registry_url=registry_url)
    rec = {
        "event_id": uuid7(),
        "stage": "test",
        "reason": "because",
        "original_value": b"\x00\x01",
        "failed_time": 1_767_225_600_000_000,
    }
    with writer:
        data = writer.encode("dead_letter", rec, topic)
    magic, schema_id = struct.unpack_from(">bI", data)
    assert magic == 0 and schema_id > 0
    # registered under the topic's value subject
    subjects = httpx.get(f"{registry_url}/subjects", timeout=10).json()
    assert f"{topic}-value" in subjects

    # another process's codec (fresh cache) decodes it through the registry
    with reader:
        back = reader.decode(data, "dead_letter")
    assert back["reason"] == "because" and back["original_value"] == b"\x00\x01"

    # a stranger with only the registry and fastavro
    schema = json.loads(httpx.get(f"{registry_url}/schemas/ids/{schema_id}", timeout=10).json()["schema"])
    theirs = fastavro.schemaless_reader(io.BytesIO(data[5:]), fastavro.parse_schema(schema))
    assert theirs["stage"] == "test"

    # a codec without a registry names the problem instead of misreading
    with pytest.raises(Exception, match="schema_registry_url"):
        AvroCodec().decode(data, "dead_letter")
