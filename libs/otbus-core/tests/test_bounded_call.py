"""The runner's guard around librdkafka's transactional calls, which do not always keep their timeout."""

from __future__ import annotations

import threading
import time

import pytest

from otbus_core.exceptions import FatalError
from otbus_core.runner import _bounded


def test_a_call_that_returns_in_time_passes_through() -> None:
    seen: list[int] = []
    _bounded("call", lambda: seen.append(1), 1.0)
    assert seen == [1]


def test_its_exception_is_raised_as_it_was() -> None:
    def fails() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        _bounded("call", fails, 1.0)


def test_a_call_that_never_returns_is_given_up_after_its_timeout_and_grace() -> None:
    release = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(FatalError, match="send_offsets_to_transaction did not return"):
            _bounded("send_offsets_to_transaction", release.wait, 0.2, grace=0.2)
        assert 0.4 <= time.monotonic() - started < 5.0
    finally:
        release.set()  # let the abandoned thread end
