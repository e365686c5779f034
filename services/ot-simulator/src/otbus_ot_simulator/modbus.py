"""A Modbus TCP server (pymodbus) with a documented register map of live plant signals.

Register map, the same on every unit id served (`--units`, default 1 and 2); addresses are
protocol addresses (0-based), words big-endian (high word first) unless said otherwise:

| table    | address          | what                                                                  |
|----------|------------------|-----------------------------------------------------------------------|
| holding  | 0 .. 999         | signal i < 500 as float32 at 2i (sine, random walk, ramp, step: see signals) |
| holding  | 10000 .. 10000+2N-1 | every signal i as float32 at 10000+2i (for large tag counts)        |
| holding  | 1000             | uint16 update counter, +1 on every update (wraps at 65536)            |
| holding  | 3000             | int16 -1234                                                           |
| holding  | 3001             | uint16 54321                                                          |
| holding  | 3002 .. 3003     | int32 -123456789                                                      |
| holding  | 3004 .. 3005     | uint32 3000000000                                                     |
| holding  | 3006 .. 3009     | int64 -1234567890123                                                  |
| holding  | 3010 .. 3011     | float32 3.5                                                           |
| holding  | 3012 .. 3015     | float64 -2.25e10                                                      |
| holding  | 3016 .. 3020     | string "OTBUS-SIM" (10 bytes, NUL padded)                             |
| holding  | 3021 .. 3022     | float32 1.5, low word first (word order little)                       |
| holding  | 3023             | uint16 0x3412 stored byte-swapped (byte order little reads 0x1234)     |
| holding  | 3900 .. 3999     | answers exception 4 (server device failure): a faulty block           |
| input    | 0 .. N-1         | signal i as int16, scaled x10 (e.g. 21.5 -> 215)                      |
| coil     | 0 .. N-1         | signal i > its offset (bool)                                          |
| discrete | 0 .. 15          | bit i set when the update counter's bit i is set                      |

Holding registers 4000-9999 and past 10000+2N do not exist: reading them answers exception 2
(illegal data address). N is `--tags` (at most 20,000). Values change every `--interval`
seconds. Writes are accepted and ignored.
"""

from __future__ import annotations

import asyncio
import random
import signal
import struct
import time
from contextlib import suppress

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from otbus_ot_simulator.signals import plant

__all__ = ["STATIC", "ModbusPlant", "serve_modbus"]

MAX_TAGS = 20_000
SMALL_MAP = 500  # signals also at holding 0..999
BIG_BASE = 10_000
HOLDING_SIZE = BIG_BASE + 2 * MAX_TAGS
FAULTY = range(3900, 4000)

STATIC: dict[int, list[int]] = {}


def _words(fmt: str, value: object, byteswap: bool = False, wordswap: bool = False) -> list[int]:
    raw = struct.pack(">" + fmt, value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if wordswap:
        words.reverse()
    if byteswap:
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def _static() -> dict[int, list[int]]:
    text = b"OTBUS-SIM".ljust(10, b"\x00")
    return {
        3000: _words("h", -1234),
        3001: _words("H", 54321),
        3002: _words("i", -123456789),
        3004: _words("I", 3_000_000_000),
        3006: _words("q", -1234567890123),
        3010: _words("f", 3.5),
        3012: _words("d", -2.25e10),
        3016: [int.from_bytes(text[i : i + 2], "big") for i in range(0, 10, 2)],
        3021: _words("f", 1.5, wordswap=True),
        3023: _words("H", 0x1234, byteswap=True),
    }


STATIC.update(_static())


class ModbusPlant:
    """The tables behind every unit id, updated by `tick()`."""

    def __init__(self, tags: int, seed: int = 3) -> None:
        if not 0 < tags <= MAX_TAGS:
            raise ValueError(f"--tags must be 1..{MAX_TAGS} for Modbus")
        self.signals = plant(tags, seed)
        self.rng = random.Random(seed)
        self.holding = [0] * HOLDING_SIZE
        self.input = [0] * MAX_TAGS
        self.coils = [False] * MAX_TAGS
        self.discrete = [False] * 16
        self.counter = 0
        for addr, words in STATIC.items():
            self.holding[addr : addr + len(words)] = words
        self.tick()

    def tick(self, t: float | None = None) -> None:
        t = time.time() if t is None else t
        for i, s in enumerate(self.signals):
            v = float(s.sample(t, self.rng))
            words = _words("f", v)
            if i < SMALL_MAP:
                self.holding[2 * i : 2 * i + 2] = words
            self.holding[BIG_BASE + 2 * i : BIG_BASE + 2 * i + 2] = words
            self.input[i] = max(-32768, min(32767, round(v * 10))) & 0xFFFF
            self.coils[i] = v > s.offset
        self.counter = (self.counter + 1) & 0xFFFF
        self.holding[1000] = self.counter
        self.discrete = [bool(self.counter >> b & 1) for b in range(16)]

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None:
            return None  # writes are accepted and ignored
        if function_code in (3, 4):
            table = self.holding if function_code == 3 else self.input
            if function_code == 3 and any(a in FAULTY for a in range(address, address + count)):
                return ExcCodes.DEVICE_FAILURE
            if function_code == 3 and any(
                4000 <= a < BIG_BASE or a >= BIG_BASE + 2 * len(self.signals) for a in (address, address + count - 1)
            ):
                return ExcCodes.ILLEGAL_ADDRESS
            for a in range(address, address + count):
                current_registers[a - start_address] = table[a] if a < len(table) else 0
        elif function_code in (1, 2):  # bits, packed 16 to a register, lowest address first
            bits = self.coils if function_code == 1 else self.discrete
            for reg in range(address, address + count):
                word = 0
                for b in range(16):
                    i = reg * 16 + b
                    if i < len(bits) and bits[i]:
                        word |= 1 << b
                current_registers[reg - start_address] = word
        return None

    def devices(self, units: list[int]) -> list[SimDevice]:
        blocks = (
            [SimData(0, count=MAX_TAGS, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=HOLDING_SIZE, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=MAX_TAGS, values=0, datatype=DataType.REGISTERS)],
        )
        return [SimDevice(id=u, simdata=blocks, action=self.action) for u in units]


async def serve_modbus(
    host: str,
    port: int,
    tags: int,
    interval: float,
    units: list[int],
    framer: str = "socket",
    serial: str | None = None,
    baudrate: int = 19200,
) -> None:
    """Serve the plant on TCP; `framer` rtu speaks RTU frames over TCP (as a serial gateway does).

    With `serial` (a device path: a serial port or a pseudo-terminal) serve RTU on it instead.
    """
    sim = ModbusPlant(tags)
    server: ModbusTcpServer | ModbusSerialServer
    if serial is not None:
        server = ModbusSerialServer(sim.devices(units), framer=FramerType.RTU, port=serial, baudrate=baudrate)
    else:
        kind = FramerType.RTU if framer == "rtu" else FramerType.SOCKET
        server = ModbusTcpServer(sim.devices(units), address=(host, port), framer=kind)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def ticker() -> None:
        while not stop.is_set():
            await asyncio.sleep(interval)
            sim.tick()

    serving = asyncio.create_task(server.serve_forever())
    ticking = asyncio.create_task(ticker())
    what = "Modbus TCP" + (" (RTU framing)" if framer == "rtu" else "")
    where = f"{host}:{port}"
    if serial is not None:
        what, where = "Modbus RTU", f"{serial} ({baudrate} baud)"
    print(f"simulator: {what} on {where}, units {units}, {tags} signals every {interval}s", flush=True)  # noqa: T201
    await stop.wait()
    ticking.cancel()
    await server.shutdown()  # type: ignore[no-untyped-call]
    with suppress(asyncio.CancelledError):
        await serving
    with suppress(asyncio.CancelledError):
        await ticking
