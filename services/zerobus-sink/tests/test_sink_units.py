"""Row mapping, DDL, routing and settings of the zerobus-sink (no infrastructure needed)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from otbus_core.exceptions import ConfigError
from otbus_core.settings import load_settings
from otbus_zerobus_sink.config import ZerobusSinkSettings
from otbus_zerobus_sink.rows import TagRow, tag_row
from otbus_zerobus_sink.rowschema import RowSchemaError, columns_from_proto, ddl
from otbus_zerobus_sink.targets import Router


def record(value: Any, data_type: str) -> dict[str, Any]:
    return {
        "event_id": "0190a1b2-0000-7000-8000-000000000001",
        "tenant": "acme",
        "path": "p1/a/l/e/measurement/t",
        "site": "p1",
        "area": "a",
        "line": "l",
        "equipment": "e",
        "signal_type": "measurement",
        "tag_name": "t",
        "value": value,
        "data_type": data_type,
        "unit": None,
        "quality": "GOOD",
        "quality_code": None,
        "source_time": 1_700_000_000_000_001,
        "ingest_time": 1_700_000_000_000_002,
        "source_id": "plc1",
        "protocol": "modbus",
        "source_tag": "40001",
        "raw_event_id": "0190a1b2-0000-7000-8000-000000000002",
    }


@pytest.mark.parametrize(
    ("value", "data_type", "numeric", "string", "boolean"),
    [
        (2.5, "DOUBLE", 2.5, None, None),
        (7, "INT64", 7.0, None, None),
        (2**60 + 1, "INT64", float(2**60 + 1), str(2**60 + 1), None),
        (True, "BOOLEAN", 1.0, None, True),
        (False, "BOOLEAN", 0.0, None, False),
        ("RUNNING", "STRING", None, "RUNNING", None),
        (None, "NULL", None, None, None),
    ],
)
def test_each_value_kind_maps_to_its_columns(
    value: Any, data_type: str, numeric: float | None, string: str | None, boolean: bool | None
) -> None:
    row = TagRow.FromString(tag_row(record(value, data_type)))
    assert (row.numeric_value if row.HasField("numeric_value") else None) == numeric
    assert (row.string_value if row.HasField("string_value") else None) == string
    assert (row.boolean_value if row.HasField("boolean_value") else None) == boolean
    assert row.tag_path == "p1/a/l/e/measurement/t" and row.source_system_id == "plc1"
    assert row.event_time == 1_700_000_000_000_001 and row.ingest_time == 1_700_000_000_000_002
    assert not row.HasField("quality_code") and not row.HasField("unit")
    assert row.data_type == data_type and row.event_id.endswith("0001")


def test_ddl_types_follow_the_zerobus_mapping() -> None:
    text = ddl("main.plant.tags", TagRow.DESCRIPTOR)
    assert text.startswith("CREATE TABLE IF NOT EXISTS main.plant.tags (")
    lines = {ln.split()[0]: ln.split()[1].rstrip(",") for ln in text.splitlines()[1:-1]}
    assert lines["event_time"] == lines["ingest_time"] == "TIMESTAMP"
    assert lines["numeric_value"] == "DOUBLE" and lines["quality_code"] == "BIGINT"
    assert lines["boolean_value"] == "BOOLEAN" and lines["tag_path"] == "STRING"
    assert list(lines) == [f.name for f in TagRow.DESCRIPTOR.fields]


def test_nested_and_repeated_fields_are_refused_by_name() -> None:
    msg = descriptor_pb2.DescriptorProto(name="Row")
    f = msg.field.add(name="tags", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    f.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    with pytest.raises(RowSchemaError, match=r"Row\.tags: repeated"):
        columns_from_proto(msg)
    msg = descriptor_pb2.DescriptorProto(name="Row")
    msg.field.add(name="inner", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, type_name=".X")
    with pytest.raises(RowSchemaError, match=r"Row\.inner: TYPE_MESSAGE"):
        columns_from_proto(msg)


def test_routing_precedence() -> None:
    s = ZerobusSinkSettings(
        source_tables={"acme/plc1": "c.acme.plc1", "plc1": "c.all.plc1"},
        tenant_tables={"beta": "c.beta.all"},
        default_table="c.{tenant}.default",
    )
    route = Router(s)
    assert route("acme", "plc1") == "c.acme.plc1"
    assert route("beta", "plc1") == "c.all.plc1"
    assert route("beta", "other") == "c.beta.all"
    assert route("gamma", "other") == "c.gamma.default"


def test_a_rest_url_as_endpoint_is_a_startup_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTBUS_ZEROBUS_ENDPOINT", "https://dbc-1.cloud.databricks.com/api/2.0/zerobus/streams/ingest")
    with pytest.raises(ConfigError, match=r"OTBUS_ZEROBUS_ENDPOINT: .*REST URL.*WORKSPACE_ID\.zerobus\.REGION"):
        load_settings(ZerobusSinkSettings)


def test_an_endpoint_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTBUS_ZEROBUS_ENDPOINT", "1444828305810485.zerobus.us-west-2.cloud.databricks.com")
    monkeypatch.setenv("OTBUS_WORKSPACE_URL", "https://dbc-1.cloud.databricks.com")
    with pytest.raises(ConfigError, match="OTBUS_CLIENT_ID and OTBUS_CLIENT_SECRET"):
        load_settings(ZerobusSinkSettings)
    monkeypatch.setenv("OTBUS_CLIENT_ID", "sp")
    monkeypatch.setenv("OTBUS_CLIENT_SECRET", "hunter2-value")
    s = load_settings(ZerobusSinkSettings)
    assert s.oauth_client_secret() == "hunter2-value" and not s.embedded_emulator
    assert "hunter2" not in repr(s)


def test_bad_table_names_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTBUS_SOURCE_TABLES", '{"plc1": "only.two"}')
    with pytest.raises(ConfigError, match=r"OTBUS_SOURCE_TABLES: .*\[plc1\]: 'only.two' is not a three-part"):
        load_settings(ZerobusSinkSettings)


def test_credentials_from_secret_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    (tmp_path / "id").write_text("sp-from-file\n")
    (tmp_path / "secret").write_text("hunter2-from-file\n")
    monkeypatch.setenv("OTBUS_ZEROBUS_ENDPOINT", "1444828305810485.zerobus.us-west-2.cloud.databricks.com")
    monkeypatch.setenv("OTBUS_WORKSPACE_URL", "https://dbc-1.cloud.databricks.com")
    monkeypatch.setenv("OTBUS_CLIENT_ID_FILE", str(tmp_path / "id"))
    monkeypatch.setenv("OTBUS_CLIENT_SECRET_FILE", str(tmp_path / "secret"))
    s = load_settings(ZerobusSinkSettings)
    assert (s.oauth_client_id(), s.oauth_client_secret()) == ("sp-from-file", "hunter2-from-file")
    monkeypatch.setenv("OTBUS_CLIENT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="OTBUS_CLIENT_SECRET_FILE: cannot read"):
        load_settings(ZerobusSinkSettings)


def test_a_headers_provider_replaces_oauth(monkeypatch: pytest.MonkeyPatch) -> None:
    from otbus_zerobus_sink.targets import StaticHeaders, _headers_factory

    monkeypatch.setenv("OTBUS_ZEROBUS_ENDPOINT", "1444828305810485.zerobus.us-west-2.cloud.databricks.com")
    monkeypatch.setenv("OTBUS_HEADERS_PROVIDER", "otbus_zerobus_sink.targets:StaticHeaders")
    s = load_settings(ZerobusSinkSettings)  # no OAuth credentials needed
    provider = _headers_factory(s)("main.plant.tags")
    assert isinstance(provider, StaticHeaders)
    assert ("x-databricks-zerobus-table-name", "main.plant.tags") in provider.get_headers()
