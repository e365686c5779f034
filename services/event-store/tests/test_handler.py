"""The event store's mapping of a message to a row, and what it refuses before the database."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from otbus_core.codec import AvroCodec
from otbus_core.envelope import Envelope
from otbus_core.exceptions import DecodeError
from otbus_event_store.handler import to_stored_event

CODEC = AvroCodec()


def _msg(headers: list[tuple[str, bytes]], value: bytes = b'{"a": 1}', topic: str = "acme.ot.events.v1") -> Message:
    return Message(topic=topic, partition=1, offset=7, key=b"k", value=value, headers=headers)


def _env(**kw: str) -> list[tuple[str, bytes]]:
    env = Envelope.new(source="/s", type="t.v1", tenant="acme", subject="a/b", content_type="application/json")
    return [(k, v.encode()) for k, v in env.with_(**kw).headers()]


def test_json_event_becomes_a_row() -> None:
    ev = to_stored_event(_msg(_env()), CODEC)
    assert ev.tenant == "acme" and ev.type == "t.v1" and ev.subject == "a/b"
    assert ev.payload == '{"a": 1}' and (ev.topic, ev.partition, ev.offset) == ("acme.ot.events.v1", 1, 7)
    assert ev.time.endswith("Z")


@pytest.mark.parametrize(
    ("headers", "value", "match"),
    [
        (_env(time="2026-01-01T00:00:00"), b"{}", "zone"),
        (_env(tenant="other"), b"{}", "does not match"),
        (_env(), b"{not json", "not JSON"),
        (_env(), b"[" * 100_000, "not JSON"),
        ([("ce_id", b"x")], b"{}", "missing"),
        ([*_env(), ("ce_subject", b"\xff")], b"{}", "UTF-8"),
    ],
)
def test_refused_before_the_database(headers: list[tuple[str, bytes]], value: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        to_stored_event(_msg(headers, value), CODEC)
