"""Stopping an adapter's sources when a protocol library loses the cancellation.

On Python 3.11, `asyncio.wait_for` returns the awaited result instead of raising when the
cancellation arrives as that result does (python/cpython#86296). pymodbus and asyncua await
every request through it, so a source's task can run on after `cancel()`: an adapter's
graceful stop then waited for it forever.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otbus_core.adapter import AdapterRuntime, AdapterSettings, SourceContext, checkpoint
from otbus_core.sources import SourceConfig, SourceError, SourceStore


async def _wait_for_with_a_lost_cancel(then_checkpoint: bool) -> str:
    """Cancel a task the moment the future it waits for through `wait_for` completes."""
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def body() -> str:
        got = await asyncio.wait_for(fut, 5)
        if then_checkpoint:
            await checkpoint()
        return f"ran on with {got!r}"

    task = asyncio.create_task(body())
    await asyncio.sleep(0)  # the task now waits inside wait_for
    fut.set_result("a reply")
    task.cancel()
    return await task


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for no longer loses a cancellation")
async def test_wait_for_loses_the_cancellation_on_this_python() -> None:
    assert await _wait_for_with_a_lost_cancel(then_checkpoint=False) == "ran on with 'a reply'"


async def test_checkpoint_raises_the_cancellation_wait_for_lost() -> None:
    with pytest.raises(asyncio.CancelledError):
        await _wait_for_with_a_lost_cancel(then_checkpoint=True)


async def test_checkpoint_does_nothing_when_no_one_asked_to_stop() -> None:
    await checkpoint()


class _Deaf:
    """A source whose reads lose the first `lost` cancellations, as a wait_for can."""

    def __init__(self, lost: int) -> None:
        self.lost = lost
        self.stopped = False

    async def run(self, ctx: SourceContext[SourceConfig]) -> None:
        ctx.connected()
        try:
            while True:
                try:
                    await asyncio.sleep(0.02)
                except asyncio.CancelledError:
                    if self.lost == 0:
                        raise
                    self.lost -= 1
        finally:
            self.stopped = True


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[AdapterRuntime[SourceConfig]]:
    # Nothing here talks to Kafka: only the runtime's source tasks are started and stopped.
    settings = AdapterSettings(kafka_bootstrap="127.0.0.1:9", state_dir=tmp_path, service_name="test-adapter")
    store = SourceStore(SourceConfig, ["test"], None, settings.home)
    rt: AdapterRuntime[SourceConfig] = AdapterRuntime(settings, store, lambda src: _DEAF[src.name])
    try:
        yield rt
    finally:
        rt.spool.close()


_DEAF: dict[str, _Deaf] = {}


def _launch(rt: AdapterRuntime[SourceConfig], name: str, source: _Deaf) -> None:
    _DEAF[name] = source
    rt._launch(SourceConfig(name=name, protocol="test", endpoint="test://here"))


async def test_a_source_that_lost_the_cancellation_is_cancelled_again(runtime: AdapterRuntime[SourceConfig]) -> None:
    src = _Deaf(lost=2)
    _launch(runtime, "deaf", src)
    await asyncio.sleep(0.1)
    assert runtime.states["deaf"].connected

    t0 = time.monotonic()
    await asyncio.wait_for(runtime._cancel("deaf", grace=0.2, patience=5), 10)
    took = time.monotonic() - t0
    assert src.stopped
    assert took < 4, f"stopping took {took:.1f}s"
    assert not runtime.states["deaf"].connected


async def test_a_source_that_will_not_stop_is_left_after_patience(
    runtime: AdapterRuntime[SourceConfig], caplog: pytest.LogCaptureFixture
) -> None:
    src = _Deaf(lost=1_000_000)
    _launch(runtime, "stuck", src)
    await asyncio.sleep(0.1)
    task = runtime._tasks["stuck"]
    try:
        with caplog.at_level(logging.WARNING, logger="otbus_core.adapter"):
            await asyncio.wait_for(runtime._cancel("stuck", grace=0.1, patience=0.6), 10)
        assert not src.stopped  # still running: the stop went on without it
        assert "source stuck did not stop within 0.6s of being cancelled" in caplog.text
        assert "cancelling again" in caplog.text
        # while it runs, a source of that name cannot be added again (two connections to one device)
        with pytest.raises(SourceError, match="has not stopped yet") as refused:
            await runtime.add_source({"name": "stuck", "protocol": "test", "endpoint": "test://here"})
        assert refused.value.status == 409
    finally:
        src.lost = 0  # now it listens
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert src.stopped


async def test_a_source_left_running_by_a_removal_is_cancelled_again_at_shutdown(
    runtime: AdapterRuntime[SourceConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    import otbus_core.adapter as adapter_module

    exits: list[int] = []
    monkeypatch.setattr(adapter_module.os, "_exit", exits.append)
    src = _Deaf(lost=2)
    _launch(runtime, "stuck", src)
    await asyncio.sleep(0.1)
    await asyncio.wait_for(runtime._cancel("stuck", grace=0.1, patience=0.3), 10)  # as a removal does
    assert not src.stopped and runtime.is_stopping("stuck")  # both cancellations lost: left running
    await asyncio.wait_for(runtime.stop(), 30)
    assert src.stopped  # the shutdown's cancel reached it
    assert exits == []  # so the process ends normally, not with status 70


class _SlowToClose:
    """A source that takes a while to close its connection."""

    async def run(self, ctx: SourceContext[SourceConfig]) -> None:
        ctx.connected()
        try:
            while True:
                await asyncio.sleep(0.02)
        finally:
            await asyncio.sleep(0.5)


async def test_a_source_still_closing_cannot_be_added_again(runtime: AdapterRuntime[SourceConfig]) -> None:
    runtime.factory = lambda _: _SlowToClose()
    doc = {"name": "dev", "protocol": "test", "endpoint": "test://here"}
    await runtime.add_source(doc)
    await asyncio.sleep(0.1)
    removing = asyncio.create_task(runtime.remove_source("dev"))
    await asyncio.sleep(0.1)  # closing now
    with pytest.raises(SourceError, match="has not stopped yet") as refused:
        await runtime.add_source(doc)
    assert refused.value.status == 409
    await asyncio.wait_for(removing, 5)
    assert "dev" not in runtime.states
    await runtime.add_source(doc)  # once it has closed
    await asyncio.sleep(0.1)
    assert runtime.states["dev"].connected
    await asyncio.wait_for(runtime._cancel("dev", grace=2, patience=3), 5)


class _TurnsStopIntoError:
    """A source whose connect fails just as the cancellation comes: it raises an error of its
    own instead of CancelledError (as pymodbus's connect() returning False would make it)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.stopping_while_running: bool | None = None
        self.stopping_at_error: bool | None = None

    async def run(self, ctx: SourceContext[SourceConfig]) -> None:
        self.attempts += 1
        ctx.connected()
        self.stopping_while_running = ctx.stopping
        try:
            while True:
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            self.stopping_at_error = ctx.stopping  # what a source asks before reporting its points BAD
            raise ConnectionError("cannot connect") from None


async def test_a_stop_is_not_taken_for_a_lost_connection(runtime: AdapterRuntime[SourceConfig]) -> None:
    src = _TurnsStopIntoError()
    runtime.factory = lambda _: src
    runtime._launch(SourceConfig(name="dev", protocol="test", endpoint="test://here", reconnect_initial_s=0.05))
    await asyncio.sleep(0.1)
    task = runtime._tasks["dev"]
    t0 = time.monotonic()
    await asyncio.wait_for(runtime._cancel("dev", grace=3, patience=6), 10)
    assert time.monotonic() - t0 < 1, "it reconnected instead of stopping"
    assert task.cancelled()
    assert src.attempts == 1 and runtime.states["dev"].reconnects == 0
    assert not runtime.states["dev"].connected
    assert src.stopping_while_running is False and src.stopping_at_error is True
    assert not runtime.is_stopping("dev")


class _GroupThenSteady:
    """First attempt: a TaskGroup whose child loses the connection while the group is awaited
    (on 3.11 that leaves a cancellation request on the task that awaited it). Later attempts
    connect, pass a `checkpoint`, and read until cancelled."""

    def __init__(self) -> None:
        self.attempts = 0
        self.reading = asyncio.Event()

    async def run(self, ctx: SourceContext[SourceConfig]) -> None:
        self.attempts += 1
        if self.attempts == 1:

            async def child() -> None:
                await asyncio.sleep(0.01)
                raise ConnectionError("the device went away")

            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(child())
            except* ConnectionError:
                raise ConnectionError("connection lost") from None
        await checkpoint()
        ctx.connected()
        self.reading.set()
        while True:
            await asyncio.sleep(0.02)
            await checkpoint()


async def test_a_failed_task_group_does_not_end_the_next_attempt(runtime: AdapterRuntime[SourceConfig]) -> None:
    src = _GroupThenSteady()
    runtime.factory = lambda _: src
    runtime._launch(SourceConfig(name="dev", protocol="test", endpoint="test://here", reconnect_initial_s=0.05))
    await asyncio.wait_for(src.reading.wait(), 10)
    await asyncio.sleep(0.3)
    state = runtime.states["dev"]
    assert src.attempts == 2 and state.reconnects == 1
    assert state.connected, state.last_error
    assert not runtime._tasks["dev"].done()
    await asyncio.wait_for(runtime._cancel("dev", grace=2, patience=4), 10)
    assert not state.connected
