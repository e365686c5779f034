"""HTTP -> Kafka -> normalizer -> event store -> NOTIFY -> notify bridge -> WebSocket and the live page
(in a real headless Chromium)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import ARTIFACTS, BridgeClient, Infra, Service, Stack, bridge_service, ignition_events, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def live(infra: Infra) -> Iterator[tuple[Stack, Service]]:
    stack = Stack.build(infra, n_tenants=1).start()
    bridge = bridge_service(infra, {k: t for t, k in stack.keys.items()}).start()
    yield stack, bridge
    bridge.stop()
    stack.stop()


def test_1000_events_through_the_pipeline_reach_a_client_each_once(live: tuple[Stack, Service]) -> None:
    stack, bridge = live
    tenant = stack.tenants[0]
    with BridgeClient(bridge.url, stack.keys[tenant]) as c:
        assert c.subscribe()["op"] == "subscribed"
        for start in range(0, 1000, 250):
            r = stack.post_batch(tenant, list(ignition_events(250, start=start, prefix="E2E")))
            assert r.status_code == 200, r.text
        got = c.wait_events(1000, timeout=90)
    ids = [e["id"] for e in got]
    assert len(ids) == 1000 == len(set(ids))
    stored = {e["event_id"] for e in stack.all_events(tenant, subject_prefix="plant1/")}
    assert set(ids) <= stored
    assert {e["data"]["value"] for e in got} == set(range(1000))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it)")
def test_live_page_shows_values_and_reconnects(live: tuple[Stack, Service]) -> None:
    from playwright.sync_api import sync_playwright

    stack, bridge = live
    tenant = stack.tenants[0]

    def post(value: float, tag: str) -> None:
        event = {**next(ignition_events(1, prefix="Live")), "tagPath": f"[default]Live/{tag}", "value": value}
        event["dataType"] = "float"
        r = stack.post_batch(tenant, [event])
        assert r.status_code == 200, r.text

    def shown(page: Any, value: float, timeout_ms: float) -> float:
        """Waits until the page's tag tree shows `value`; returns how long that took (s)."""
        t0 = time.monotonic()
        page.wait_for_function(
            "v => Object.values(window.otbusLive.values).includes(v)"
            " && [...document.querySelectorAll('#tree .value')].some(e => e.textContent.startsWith(v.toFixed(3)))",
            arg=value,
            timeout=timeout_ms,
            polling=10,
        )
        return time.monotonic() - t0

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        # a feed held back for 6 s: the row of an event that comes within it must still come
        page.goto(f"{bridge.url}/?token={stack.keys[tenant]}&feed_every_ms=6000")
        page.wait_for_function("window.otbusLive && window.otbusLive.state === 'live'", timeout=15_000)

        post(1.5, "Warmup")  # the first event also creates topics and consumer assignments
        shown(page, 1.5, 60_000)
        took = []
        for value in (42.125, 43.25, 44.375):
            post(value, "Temperature")
            took.append(shown(page, value, 3_000))
        # shown within a second of the POST returning (the median of three, so one scheduling
        # hiccup of a busy CI machine does not decide it; none may take 3 s)
        assert sorted(took)[1] < 1.0, took

        # the bridge restarts: the page notices, reconnects, resumes with since and misses nothing
        bridge.stop()
        page.wait_for_function("window.otbusLive.state !== 'live'", timeout=10_000)
        post(55.5, "WhileAway")
        time.sleep(1.0)
        bridge.start()
        page.wait_for_function("window.otbusLive.state === 'live' && window.otbusLive.connects >= 2", timeout=30_000)
        shown(page, 55.5, 10_000)
        post(66.625, "Temperature")
        shown(page, 66.625, 5_000)
        # the event feed has its row too, newest first, with its value: this event came within
        # 6 s of the feed's last rows (WhileAway's were drawn, or held, just before), so its row
        # is held back, and must not wait for a next event
        page.wait_for_function(
            "() => { const r = document.querySelector('#feed tbody tr');"
            " return r && r.children[2].textContent.endsWith('/Temperature')"
            " && r.children[3].textContent === '66.625'; }",
            timeout=10_000,
            polling=10,
        )
        assert page.evaluate("window.otbusLive.closes.length") >= 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "live-page.png"), full_page=True)
        browser.close()
    wait_until(lambda: (ARTIFACTS / "live-page.png").stat().st_size > 10_000, 5, "the screenshot")
