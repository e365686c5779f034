"""Polls one Modbus device: merged reads per poll group, values decoded, errors as BAD quality."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from otbus_core.adapter import SourceContext, checkpoint
from otbus_core.envelope import now_micros
from otbus_core.publisher import Reading
from otbus_ingest_modbus.config import ModbusSource
from otbus_ingest_modbus.registers import Point, Read, Table, decode, plan_reads, points

__all__ = ["CONNECTION_LOST", "NO_RESPONSE", "ModbusPoller"]

NO_RESPONSE = 256
"""quality_code of a read the device did not answer in time (Modbus exception codes are 1-255)."""
CONNECTION_LOST = 257
"""quality_code published for every point when the connection to the device is lost."""

_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusPoller:
    def __init__(self, cfg: ModbusSource) -> None:
        self.cfg = cfg
        self.groups: list[tuple[str, float, list[Read]]] = []
        for name, interval, entries in cfg.groups():
            pts = points(entries, cfg.unit_id, cfg.byte_order, cfg.word_order)
            pts = [p if p.unit_id == cfg.unit_id else _prefixed(p) for p in pts]
            self.groups.append((name, interval, plan_reads(pts, cfg.max_read_registers, cfg.max_read_bits)))
        self._lock = asyncio.Lock()

    def _client(self) -> Any:
        c = self.cfg
        if c.transport == "rtu":
            return AsyncModbusSerialClient(
                c.device,
                framer=FramerType.RTU,
                baudrate=c.baudrate,
                parity=c.parity,
                stopbits=c.stopbits,
                bytesize=c.bytesize,
                timeout=c.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        framer = FramerType.RTU if c.transport == "rtu-tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient(
            c.host, port=c.tcp_port, framer=framer, timeout=c.timeout_s, retries=0, reconnect_delay=0
        )

    async def run(self, ctx: SourceContext[ModbusSource]) -> None:
        client = self._client()
        connected = False
        try:
            if not await client.connect():
                raise ConnectionError(f"cannot connect to {self.cfg.endpoint}")
            await checkpoint()  # connect() waits through wait_for too
            ctx.connected()
            connected = True
            async with asyncio.TaskGroup() as tg:
                for name, interval, reads in self.groups:
                    tg.create_task(self._poll(ctx, client, interval, reads), name=f"{self.cfg.name}/{name}")
        except* (ModbusException, ConnectionError, OSError) as eg:
            if connected and not ctx.stopping:  # gone: every point of the device is BAD until it is back
                self._all_bad(ctx, CONNECTION_LOST, f"connection lost: {eg.exceptions[0]}")
            raise ConnectionError(str(eg.exceptions[0])) from None
        finally:
            client.close()

    async def _poll(self, ctx: SourceContext[ModbusSource], client: Any, interval: float, reads: list[Read]) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            readings: list[Reading] = []
            for r in reads:
                readings += await self._read(ctx, client, r)
                # pymodbus awaits each request through wait_for, which can lose a cancellation
                # on 3.11; the TaskGroup cancels this task once only
                await checkpoint()
            ctx.emit(readings)
            next_at += interval
            now = loop.time()
            if next_at < now:  # fell behind: skip the missed ticks rather than burst
                next_at = now + interval - (now - next_at) % interval
            await asyncio.sleep(next_at - now)

    async def _read(self, ctx: SourceContext[ModbusSource], client: Any, r: Read) -> list[Reading]:
        fn = {
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
        }[r.table]
        async with self._lock:
            try:
                rr = await fn(r.address, count=r.count, device_id=r.unit_id)
            except ModbusException as e:
                if not client.connected:
                    raise
                ctx.error(f"unit {r.unit_id} {r.table.value}@{r.address}: no response ({e})")
                return _bad(r, NO_RESPONSE, f"no response: {e}")
        t = now_micros()
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 4)
            why = f"exception {code} ({_EXCEPTIONS.get(code, 'unknown')})"
            ctx.error(f"unit {r.unit_id} {r.table.value}@{r.address}+{r.count}: {why}")
            return _bad(r, code, why, t)
        out = []
        for p in r.points:
            i = p.address - r.address
            try:
                if r.table.bits:
                    value: Any = decode(p, bits=rr.bits[i : i + 1])
                else:
                    value = decode(p, words=rr.registers[i : i + p.width])
            except (ValueError, IndexError, UnicodeDecodeError) as e:  # a short or odd answer
                out.append(_bad_point(p, 4, f"cannot decode: {e}", t))
                continue
            out.append(Reading(p.tag, value, t, 0, "", p.declared_type, p.unit, _attrs(p)))
        return out

    def _all_bad(self, ctx: SourceContext[ModbusSource], code: int, why: str) -> None:
        t = now_micros()
        ctx.emit([_bad_point(p, code, why, t) for _, _, reads in self.groups for r in reads for p in r.points])


def _prefixed(p: Point) -> Point:
    """Points of another unit id than the source's are named `<tag>_unit<id>`: each its own path."""
    return replace(p, tag=f"{p.tag}_unit{p.unit_id}")


def _attrs(p: Point, error: str | None = None) -> dict[str, str] | None:
    a = {}
    if p.signal_type:
        a["signal_type"] = p.signal_type
    if error:
        a["error"] = error
    return a or None


def _bad_point(p: Point, code: int, why: str, t: int | None = None) -> Reading:
    return Reading(p.tag, None, t if t is not None else now_micros(), code, "", p.declared_type, p.unit, _attrs(p, why))


def _bad(r: Read, code: int, why: str, t: int | None = None) -> list[Reading]:
    t = t if t is not None else now_micros()
    return [_bad_point(p, code, why, t) for p in r.points]
