"""The adapter's own client certificate: made once, as a matching pair, and checked on use."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from otbus_ingest_opcua.source import _check_pair, _make_client_certificate

from otbus_core.exceptions import ConfigError


def test_a_made_pair_matches_and_a_mixed_one_is_refused_by_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    asyncio.run(_make_client_certificate(a / "client_key.pem", a / "client_cert.der", "urn:test:a"))
    asyncio.run(_make_client_certificate(b / "client_key.pem", b / "client_cert.der", "urn:test:b"))
    _check_pair(a / "client_key.pem", a / "client_cert.der")
    assert not [p for p in a.iterdir() if p.name.startswith(".new-")]  # no leftovers
    # what two sources making the certificate at once used to leave behind
    shutil.copy(b / "client_key.pem", a / "client_key.pem")
    with pytest.raises(ConfigError, match=r"client_key\.pem does not belong to the certificate .*client_cert\.der"):
        _check_pair(a / "client_key.pem", a / "client_cert.der")
