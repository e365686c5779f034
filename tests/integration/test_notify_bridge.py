"""The notify bridge against real PostgreSQL: live relay, resume, reconnects, isolation, bad input."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from tests.support import (
    BridgeClient,
    Infra,
    Service,
    bridge_service,
    insert_events,
    migrate_store,
    new_tenant,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

JWT_SECRET = "test-secret-" + "x" * 40
KILL_ROLE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"


class Bridge:
    def __init__(self, svc: Service, tokens: dict[str, str]) -> None:
        self.svc = svc
        self.token = {t: k for k, t in tokens.items()}
        self.a, self.b = sorted(self.token)

    def client(self, tenant: str, **kw: Any) -> BridgeClient:
        return BridgeClient(self.svc.url, self.token[tenant], **kw)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.svc.url}/metrics", timeout=5).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


@pytest.fixture(scope="module")
def bridge(infra: Infra) -> Iterator[Bridge]:
    migrate_store(infra.database_url)
    tokens = {f"tok-{t}-{uuid.uuid4().hex}": t for t in (new_tenant("a"), new_tenant("b"))}
    svc = bridge_service(infra, tokens, jwt_secret=JWT_SECRET, client_queue_events="300", fetch_batch="100").start()
    yield Bridge(svc, tokens)
    svc.stop()


def _seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


def _ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


def test_live_events_each_once_in_order(bridge: Bridge, infra: Infra) -> None:
    with bridge.client(bridge.a) as c:
        assert c.subscribe()["op"] == "subscribed"
        ids = insert_events(infra.database_url, bridge.a, 600, per_tx=7)
        got = c.wait_events(600)
    assert _ids(got) == ids
    assert _seqs(got) == sorted(set(_seqs(got)))
    assert got[0]["data"]["value"] == 0 and got[0]["type"] == "otbus.ot.tag.v1"
    assert bridge.metric("otbus_bridge_notify_to_ws_seconds_count") > 0
    # an idle client's frames are written straight to its connection (uvicorn's sansio server)
    wait_until(lambda: bridge.metric("otbus_bridge_frames_direct_total") > 0, 5, "a directly written frame")


def test_listener_and_pool_connections_killed_mid_stream(bridge: Bridge, infra: Infra) -> None:
    """pg_terminate_backend on every bridge connection, twice, while events are written: none lost."""
    before = bridge.metric("otbus_bridge_listener_reconnects_total")
    with bridge.client(bridge.a) as c:
        c.subscribe()
        ids: list[str] = []
        writer = threading.Thread(
            target=lambda: ids.extend(insert_events(infra.database_url, bridge.a, 1500, per_tx=5, pause=0.005))
        )
        writer.start()
        with psycopg.connect(infra.database_admin_url, autocommit=True) as admin:
            for _ in range(2):
                time.sleep(0.4)
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'otbus-notify-bridge'"
                ).fetchall()
                assert len(killed) >= 2  # the listener and the pool's connections
                wait_until(lambda: httpx.get(f"{bridge.svc.url}/readyz").status_code == 200, 20, "ready again")
        writer.join()
        got = c.wait_events(1500, timeout=60)
    assert _ids(got) == ids
    assert bridge.metric("otbus_bridge_listener_reconnects_total") >= before + 2


def test_resume_after_disconnect_gets_exactly_the_gap(bridge: Bridge, infra: Infra) -> None:
    with bridge.client(bridge.a) as c:
        c.subscribe()
        first = insert_events(infra.database_url, bridge.a, 20)
        assert _ids(c.wait_events(20)) == first
        last_seen = c.events[-1]["id"]
    # 5 s away while 500 events flow
    gap = insert_events(infra.database_url, bridge.a, 500, per_tx=10, pause=0.1)
    more: list[str] = []
    with bridge.client(bridge.a) as c:
        writer = threading.Thread(
            target=lambda: more.extend(insert_events(infra.database_url, bridge.a, 200, per_tx=2))
        )
        sub = c.subscribe(since=last_seen)
        writer.start()  # live events while the gap is replayed: the seam
        assert sub["op"] == "subscribed" and sub["since"] == last_seen
        writer.join()
        got = c.wait_events(700)
        marker = c.wait_frame(lambda f: f.get("op") == "replayed")
    assert _ids(got) == gap + more
    assert _seqs(got) == sorted(set(_seqs(got)))
    assert marker["events"] >= 500


def test_resume_by_seq_when_nothing_had_arrived(bridge: Bridge, infra: Infra) -> None:
    with bridge.client(bridge.b) as c:
        start = c.subscribe()["seq"]
    missed = insert_events(infra.database_url, bridge.b, 50)
    with bridge.client(bridge.b) as c:
        assert c.subscribe(since_seq=start)["since_seq"] == start
        assert _ids(c.wait_events(50)) == missed
    with bridge.client(bridge.b) as c:
        err = c.subscribe(since_seq=start + 10**9)
        assert (err["code"], err["field"]) == ("unknown_since", "since_seq")
        c.frames.clear()
        err = c.subscribe(since_seq=start, since=missed[0])
        assert (err["code"], err["field"]) == ("invalid_subscribe", "since_seq")


def test_relay_runs_at_commit_for_any_writer(bridge: Bridge, infra: Infra) -> None:
    """A plant transaction left open holds no lock of the feed (the event store keeps storing);
    a rolled-back write is never announced; a plant role with no rights on otbus_* can write."""
    t = bridge.a
    role = f"plant_{uuid.uuid4().hex[:8]}"
    insert = (
        "INSERT INTO agentic_hmi.agent_recommendations (tenant, equipment_id, issue_type, recommended_action)"
        " VALUES (%s, %s, 'x', 'y')"
    )
    with psycopg.connect(infra.database_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'p'")
        admin.execute(f"GRANT USAGE ON SCHEMA agentic_hmi TO {role}")
        admin.execute(f"GRANT INSERT ON agentic_hmi.agent_recommendations TO {role}")
        host = infra.database_url.rsplit("@", 1)[1]
        try:
            with bridge.client(t) as c, psycopg.connect(f"postgresql://{role}:p@{host}") as plant:
                c.subscribe(channels=["recommendation_inserted", "otbus_events"])
                plant.execute(insert, (t, "OPEN-1"))  # its transaction stays open
                t0 = time.monotonic()
                stored = insert_events(infra.database_url, t, 3)
                assert time.monotonic() - t0 < 5  # not blocked by the open plant transaction
                plant.rollback()
                plant.execute(insert, (t, "KEPT-1"))
                plant.commit()
                got = c.wait_events(4)
            assert _ids(got[:3]) == stored
            assert [e["data"]["equipment_id"] for e in got[3:]] == ["KEPT-1"]
        finally:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_one_megabyte_payload_whole_and_tenants_isolated(bridge: Bridge, infra: Infra) -> None:
    big = {"blob": "x" * (1024 * 1024), "value": 1}
    with bridge.client(bridge.a) as a, bridge.client(bridge.b) as b:
        a.subscribe()
        # a filter cannot name another tenant: there is no such field
        spoof = b.subscribe(tenant=bridge.a)
        assert spoof["op"] == "error" and spoof["code"] == "unknown_filter" and spoof["field"] == "tenant"
        b.frames.clear()
        b.subscribe()
        a_ids = insert_events(infra.database_url, bridge.a, 3, payload=lambda i: big if i == 1 else {"value": i})
        b_ids = insert_events(infra.database_url, bridge.b, 2)
        got_a = a.wait_events(3)
        b.wait_events(2)
        time.sleep(0.5)
    assert _ids(got_a) == a_ids and got_a[1]["data"] == big
    assert _ids(b.events) == b_ids
    assert not set(a_ids) & set(_ids(b.events))


def test_recommendations_and_opted_in_tables_are_relayed(bridge: Bridge, infra: Infra) -> None:
    t = bridge.a
    table = f"work_orders_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(infra.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, plant text, asset text, what text)")
        conn.execute("SELECT otbus_relay_table(%s, 'recommendation_inserted', 'plant', 'asset')", (table,))
        with bridge.client(t) as recs, bridge.client(t) as tags:
            recs.subscribe(channels=["recommendation_inserted", "recommendation_status_changed"])
            tags.subscribe(channels=["otbus_events"])
            row = conn.execute(
                "INSERT INTO agentic_hmi.agent_recommendations"
                " (tenant, equipment_id, subject, issue_type, severity, recommended_action, confidence_score)"
                " VALUES (%s, 'HAUL-001', 'plant1/mine/haul/HAUL-001', 'high_temperature', 'critical',"
                " %s, 0.93) RETURNING recommendation_id",
                (t, "reduce payload " + "y" * 9000),  # too big for NOTIFY: sent by reference
            ).fetchone()
            assert row is not None
            conn.execute(
                "UPDATE agentic_hmi.agent_recommendations SET status = 'approved', operator_id = 'op7'"
                " WHERE recommendation_id = %s",
                (row[0],),
            )
            conn.execute(f"INSERT INTO {table} (plant, asset, what) VALUES (%s, 'press1', 'seal')", (t,))  # noqa: S608
            got = recs.wait_events(3)
            time.sleep(0.3)
    assert [e["type"] for e in got] == ["recommendation.inserted", "recommendation.status_changed", f"{table}.insert"]
    assert got[0]["data"]["recommended_action"].endswith("y" * 9000)
    assert got[1]["data"]["status"] == "approved" and got[1]["channel"] == "recommendation_status_changed"
    assert got[2]["data"]["what"] == "seal" and got[2]["subject"] == "press1"
    assert tags.events == []


def test_filters_by_type_and_subject_prefix(bridge: Bridge, infra: Infra) -> None:
    with bridge.client(bridge.b) as c:
        c.subscribe(types=["otbus.alarm.v1"], subject_prefix=["plant1/press/", "plant1/oven/"])
        insert_events(infra.database_url, bridge.b, 3, subject="plant1/press/p1/temp")  # wrong type
        want = insert_events(infra.database_url, bridge.b, 2, subject="plant1/press/p1/temp", type_="otbus.alarm.v1")
        insert_events(infra.database_url, bridge.b, 2, subject="plant1/saw/s1/temp", type_="otbus.alarm.v1")
        want += insert_events(infra.database_url, bridge.b, 1, subject="plant1/oven/o1/temp", type_="otbus.alarm.v1")
        got = c.wait_events(3)
        time.sleep(0.5)
    assert _ids(c.events) == want == _ids(got)


def test_bad_input_gets_clear_errors_and_others_keep_flowing(bridge: Bridge, infra: Infra) -> None:
    url = bridge.svc.url
    with bridge.client(bridge.b) as good:
        good.subscribe()
        with bridge.client(bridge.b) as c:
            c.send("not json")
            assert c.wait_frame(lambda f: f.get("op") == "error")["code"] == "malformed"
            c.frames.clear()
            c.send(b"\x00binary")
            assert "binary" in c.wait_frame(lambda f: f.get("op") == "error")["message"]
            cases = [
                ({"op": "subscribe", "colour": "red"}, "unknown_filter", "colour"),
                ({"op": "subscribe", "types": "otbus.ot.tag.v1"}, "invalid_subscribe", "types"),
                ({"op": "subscribe", "since": "yesterday"}, "invalid_subscribe", "since"),
                ({"op": "subscribe", "since": str(uuid.uuid4())}, "unknown_since", "since"),
                ({"op": "subscribe", "channels": ["pg_catalog"]}, "unknown_channel", "channels"),
                ({"op": "dance"}, "unknown_op", "op"),
                ([1, 2], "malformed", "op"),
            ]
            for msg, code, field in cases:
                c.frames.clear()
                c.send(json.dumps(msg))
                err = c.wait_frame(lambda f: f.get("op") == "error")
                assert (err["code"], err.get("field")) == (code, field), msg
            c.send({"op": "ping"})
            assert c.wait_frame(lambda f: f.get("op") == "pong")
            c.send("x" * (80 * 1024))  # over max_message_bytes (64 KiB)
            assert c.wait_closed()[0] == 1009

        for token, reason in [
            (None, "missing token"),
            ("nope", "invalid token"),
            (jwt.encode({"tenant": bridge.a, "exp": int(time.time()) - 60}, JWT_SECRET), "token expired"),
            (jwt.encode({"tenant": bridge.a, "exp": int(time.time()) + 60}, "another-secret-" + "y" * 30), "invalid"),
            (jwt.encode({"tenant": "Not A Tenant", "exp": int(time.time()) + 60}, JWT_SECRET), "invalid token"),
        ]:
            with BridgeClient(url, token) as bad:
                code, why = bad.wait_closed()
                assert code == 4401 and reason in why, (token, why)

        signed = jwt.encode({"tenant": bridge.b, "exp": int(time.time()) + 3}, JWT_SECRET)
        with BridgeClient(url, signed) as short:
            assert short.subscribe()["op"] == "subscribed"
            assert short.wait_closed(timeout=15) == (4401, "token expired")

        ids = insert_events(infra.database_url, bridge.b, 10)
        assert _ids(good.wait_events(10)) == ids


class StalledClient:
    """A WebSocket client that subscribes and then reads nothing (a tiny receive buffer, so the
    bridge's writes back up at once); `drain()` reads it all at the end, frames and close."""

    def __init__(self, url: str, token: str) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.protocol = ClientProtocol(parse_uri(url.replace("http://", "ws://") + f"/ws?token={token}"))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = url.removeprefix("http://").split(":")
        self.sock.connect((host, int(port)))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while self.protocol.handshake_exc is None and not self.protocol.events_received() and self._read_some():
            if getattr(self.protocol, "response", None) is not None:
                break
        self.protocol.send_text(json.dumps({"op": "subscribe"}).encode())
        self._flush()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            self.sock.sendall(data)

    def _read_some(self) -> bool:
        data = self.sock.recv(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        return bool(data)

    def drain(self, timeout: float = 20.0) -> tuple[list[dict[str, Any]], int | None, str]:
        from websockets.frames import Close, Opcode

        self.sock.settimeout(timeout)
        frames: list[dict[str, Any]] = []
        close: Close | None = None
        while close is None and self._read_some():
            for f in self.protocol.events_received():
                if f.opcode is Opcode.TEXT:
                    frames.append(json.loads(f.data))
                elif f.opcode is Opcode.CLOSE:
                    close = Close.parse(f.data)
            self._flush()
        self.sock.close()
        return frames, close.code if close else None, close.reason if close else ""


def test_slow_client_is_closed_and_others_are_not(bridge: Bridge, infra: Infra) -> None:
    payload = {"value": 1, "pad": "z" * 20_000}
    with bridge.client(bridge.a) as fast:
        fast.subscribe()
        slow = StalledClient(bridge.svc.url, bridge.token[bridge.a])
        time.sleep(0.5)
        before = bridge.metric("otbus_bridge_slow_client_closes_total")
        ids = insert_events(infra.database_url, bridge.a, 1500, per_tx=50, payload=lambda i: payload)
        assert _ids(fast.wait_events(1500, timeout=60)) == ids
        wait_until(lambda: bridge.metric("otbus_bridge_slow_client_closes_total") > before, 30, "the slow close")
        # the stalled client reads at last: what was sent before the close, then the close
        frames, code, reason = slow.drain()
    got = [e["id"] for f in frames if f.get("op") == "events" for e in f["events"]]
    assert got == ids[: len(got)] and len(got) < len(ids)
    assert code == 4008 and "resume with since" in reason
    with bridge.client(bridge.a) as again:  # as the reason says
        again.subscribe(since=got[-1])
        assert _ids(again.wait_events(len(ids) - len(got), timeout=60)) == ids[len(got) :]


@pytest.mark.parametrize("source", ["password_file", "provider"])
def test_reconnects_with_refreshed_credentials(infra: Infra, tmp_path: Any, source: str) -> None:
    """A least-privilege login (otbus_feed) whose password rotates (as Lakebase tokens do): the
    bridge fetches the password before each connection (from a file, or from a provider callable)
    and misses nothing across the change."""
    tenant = new_tenant("c")
    token = f"tok-{uuid.uuid4().hex}"
    role, old, new = f"bridge_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex, uuid.uuid4().hex
    secret = tmp_path / "db-token"
    secret.write_text(old + "\n")
    with psycopg.connect(infra.database_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{old}' IN ROLE otbus_feed")
        host = infra.database_url.rsplit("@", 1)[1]
        how = (
            {"database_password_file": str(secret)}
            if source == "password_file"
            else {"database_credentials_provider": "tests.support:bridge_password", "test_password_file": str(secret)}
        )
        svc = bridge_service(infra, {token: tenant}, database_url=f"postgresql://{role}@{host}", **how).start()
        try:
            with BridgeClient(svc.url, token) as c:
                c.subscribe()
                ids = insert_events(infra.database_url, tenant, 50)
                assert _ids(c.wait_events(50)) == ids
                admin.execute(f"ALTER ROLE {role} PASSWORD '{new}'")
                secret.write_text(new + "\n")
                admin.execute(KILL_ROLE, (role,))
                ids += insert_events(infra.database_url, tenant, 50, per_tx=5, pause=0.02)
                assert _ids(c.wait_events(100)) == ids
            diag = httpx.get(f"{svc.url}/diagnostics").json()
            assert diag["listener"]["connected"] and diag["listener"]["connections"] >= 2
            # a password that no longer works: not ready, and the reason says so
            secret.write_text("wrong\n")
            admin.execute(KILL_ROLE, (role,))
            r = wait_until(lambda: (r := httpx.get(f"{svc.url}/readyz")).status_code == 503 and r, 20, "not ready")
            assert "password authentication failed" in r.text
        finally:
            svc.stop()
            admin.execute(f"DROP ROLE {role}")
