"""The disk spool: order, acknowledgment, restart, torn writes and the overflow policies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from otbus_core.spool import Overflow, Spool, SpoolRecord

MiB = 1024 * 1024


def _rec(i: int, size: int = 10, readings: int = 1) -> SpoolRecord:
    return SpoolRecord("t.ot.raw.modbus.v1", b"k%d" % i, b"%08d" % i + b"x" * size, [("ce_id", b"%d" % i)], readings)


def _values(got: list[tuple[int, SpoolRecord]]) -> list[int]:
    return [int(r.value[:8]) for _, r in got]


def test_records_come_back_in_order_and_acked_ones_do_not_come_back(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=MiB)
    assert s.append([_rec(i) for i in range(10)])
    got = s.read(4)
    assert _values(got) == [0, 1, 2, 3] and [seq for seq, _ in got] == [0, 1, 2, 3]
    assert _values(s.read(100)) == list(range(4, 10))
    assert s.read(10) == []
    s.ack(4)
    assert s.depth_records == 6
    s.close()
    again = Spool(tmp_path, max_bytes=MiB)  # a restart hands out what was not acknowledged
    assert _values(again.read(100)) == list(range(4, 10))
    assert again.depth_readings == 6
    again.ack(10)
    assert again.depth_records == 0
    again.close()


def test_restart_without_close_keeps_everything_appended(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=MiB)
    s.append([_rec(i, readings=3) for i in range(5)])
    s.ack(2)
    s.sync()  # what the flusher thread does every few milliseconds
    # no close(): as after kill -9
    again = Spool(tmp_path, max_bytes=MiB)
    assert _values(again.read(100)) == [2, 3, 4]
    assert again.depth_readings == 9
    again.close()
    s.close()


def test_a_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=MiB)
    s.append([_rec(i) for i in range(3)])
    s.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[:-5])  # the last record half written
    again = Spool(tmp_path, max_bytes=MiB)
    assert _values(again.read(100)) == [0, 1]
    again.append([_rec(9)])
    assert _values(again.read(100)) == [9]
    again.close()


def test_segments_roll_over_and_delivered_ones_are_deleted(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=8 * MiB, segment_bytes=64 * 1024)
    for i in range(100):
        s.append([_rec(i, size=4000)])
    assert len(list(tmp_path.glob("*.seg"))) > 3
    got = s.read(1000)
    assert _values(got) == list(range(100))
    s.ack(100)
    assert len(list(tmp_path.glob("*.seg"))) == 1
    s.close()


def test_drop_newest_refuses_and_counts(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=MiB, overflow=Overflow.DROP_NEWEST, segment_bytes=256 * 1024)
    taken = sum(s.append([_rec(i, size=100_000, readings=10)]) for i in range(20))
    assert taken < 20
    assert s.dropped["drop_newest"] == (20 - taken) * 10
    assert _values(s.read(100)) == list(range(taken))  # the first ones are kept
    s.close()


def test_drop_oldest_keeps_the_newest_and_counts(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=MiB, overflow=Overflow.DROP_OLDEST, segment_bytes=128 * 1024)
    for i in range(40):
        assert s.append([_rec(i, size=50_000, readings=2)])
    assert s.size_bytes <= MiB
    kept = _values(s.read(1000))
    assert kept[-1] == 39 and kept == list(range(kept[0], 40))
    assert s.dropped["drop_oldest"] == kept[0] * 2
    s.close()


def test_block_waits_for_room(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=MiB, overflow=Overflow.BLOCK, segment_bytes=256 * 1024)
    i = 0
    while s.append([_rec(i, size=100_000)], timeout=0.05):
        i += 1
    assert s.dropped.get("block_timeout") == 1  # the append that timed out
    done = threading.Event()

    def writer() -> None:
        s.append([_rec(1000, size=100_000)])  # no timeout: waits until there is room
        done.set()

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(0.2)
    assert not done.is_set()
    got = s.read(1000)
    s.ack(got[-1][0] + 1)  # delivered: segments are freed
    assert done.wait(5)
    th.join()
    assert _values(s.read(10)) == [1000]
    s.close()


def test_too_small_a_bound_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="below 1 MiB"):
        Spool(tmp_path, max_bytes=1000)
