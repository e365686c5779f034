"""Simulated plant signals: ramp, sine, random walk and step, in an ISA-95-like folder tree."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["Signal", "plant"]

_KINDS = ("ramp", "sine", "random", "step")
_NAMES = {
    "ramp": ("Counter", "Production_Count"),
    "sine": ("Temperature", "Pressure"),
    "random": ("Vibration", "Flow"),
    "step": ("Running", "State"),
}


@dataclass
class Signal:
    path: str  # Ignition-style tag path, e.g. Area1/Line2/Press3/Temperature
    kind: str
    period_s: float
    amplitude: float
    offset: float
    value: float = 0.0

    def sample(self, t: float, rng: random.Random) -> float | int | bool:
        if self.kind == "ramp":
            return int(t / self.period_s * 100) % 1000
        if self.kind == "sine":
            return round(self.offset + self.amplitude * math.sin(2 * math.pi * t / self.period_s), 3)
        if self.kind == "random":
            self.value = max(0.0, self.value + rng.uniform(-1, 1) * self.amplitude * 0.05)
            return round(self.offset + self.value, 3)
        return int(t / self.period_s) % 2 == 0

    def data_type(self) -> str:
        return {"ramp": "int", "step": "bool"}.get(self.kind, "float")


def plant(count: int, seed: int = 1) -> list[Signal]:
    """`count` signals spread over areas, lines and machines."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = _KINDS[i % len(_KINDS)]
        area, line, machine = i // 400 % 5 + 1, i // 40 % 10 + 1, i // 4 % 10 + 1
        name = _NAMES[kind][i // len(_KINDS) % 2]
        path = f"Area{area}/Line{line}/Machine{machine}/{name}_{i}"
        out.append(Signal(path, kind, rng.uniform(10, 120), rng.uniform(1, 50), rng.uniform(0, 100)))
    return out
