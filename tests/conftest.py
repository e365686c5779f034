"""Session fixtures: the real infrastructure, started once (or reused when already running)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import Infra, Service, new_tenant, start_infra, tenant_normalizer


@pytest.fixture(scope="session")
def infra() -> Infra:
    return start_infra("kafka", "postgres")


@pytest.fixture
def tenant() -> str:
    return new_tenant()


@pytest.fixture(scope="session", autouse=True)
def _no_proxy() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def normalizer(infra: Infra, tenant: str) -> Iterator[Service]:
    """A running normalizer for the test's tenant."""
    svc = tenant_normalizer(infra, tenant).start()
    yield svc
    svc.stop()
