"""The event store's mapping of a message to a row, and what it refuses before the database."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from otbus_core.codec import AvroCodec
from otbus_core.envelope import Envelope
from otbus_core.exceptions import DecodeError
from otbus_event_store.handler import to_copy_line
from otbus_event_store.writer import COLUMNS

CODEC = AvroCodec()


def _msg(headers: list[tuple[str, bytes]], value: bytes = b'{"a": 1}', topic: str = "acme.ot.events.v1") -> Message:
    return Message(topic=topic, partition=1, offset=7, key=b"k", value=value, headers=headers)


def _env(**kw: str) -> list[tuple[str, bytes]]:
    env = Envelope.new(source="/s", type="t.v1", tenant="acme", subject="a/b", content_type="application/json")
    return [(k, v.encode()) for k, v in env.with_(**kw).headers()]


def _row(line: bytes) -> dict[str, bytes | None]:
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    fields = line[:-1].split(b"\t")
    assert len(fields) == len(COLUMNS)
    return {c: None if f == b"\\N" else f for c, f in zip(COLUMNS, fields, strict=True)}


def test_json_event_becomes_a_row() -> None:
    row = _row(to_copy_line(_msg(_env()), CODEC))
    assert (row["tenant"], row["type"], row["subject"]) == (b"acme", b"t.v1", b"a/b")
    assert row["payload"] == b'{"a": 1}'
    assert (row["topic"], row["partition"], row["offset"]) == (b"acme.ot.events.v1", b"1", b"7")
    assert row["time"] and row["time"].endswith(b"Z")
    assert row["causation_id"] is None


def test_fields_are_escaped_for_copy() -> None:
    headers = _env(subject="a\tb\\c\nd")
    row = _row(to_copy_line(_msg(headers, b'{"s": "x\\ty"}'), CODEC))
    assert row["subject"] == b"a\\tb\\\\c\\nd"
    assert row["payload"] == b'{"s": "x\\\\ty"}'


@pytest.mark.parametrize(
    ("headers", "value", "match"),
    [
        (_env(time="2026-01-01T00:00:00"), b"{}", "zone"),
        (_env(tenant="other"), b"{}", "does not match"),
        (_env(), b"{not json", "not JSON"),
        (_env(), b"[" * 100_000, "not JSON"),
        ([("ce_id", b"x")], b"{}", "missing"),
        ([(k, b"0.3" if k == "ce_specversion" else v) for k, v in _env()], b"{}", "is not 1.0"),
        ([*_env(), ("ce_subject", b"\xff")], b"{}", "UTF-8"),
    ],
)
def test_refused_before_the_database(headers: list[tuple[str, bytes]], value: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        to_copy_line(_msg(headers, value), CODEC)
