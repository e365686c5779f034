"""Quality mapping: each protocol's own code or text to GOOD, UNCERTAIN or BAD."""

from __future__ import annotations

__all__ = ["BAD", "GOOD", "UNCERTAIN", "map_quality"]

GOOD = "GOOD"
UNCERTAIN = "UNCERTAIN"
BAD = "BAD"

_LEVELS = (GOOD, UNCERTAIN, BAD, BAD)  # 2-bit level; Ignition's 3 = Error counts as BAD


def opcua_quality(code: int) -> str:
    """OPC-UA StatusCode: severity in bits 30-31 (00 good, 01 uncertain, 10/11 bad)."""
    return _LEVELS[((code & 0xFFFF_FFFF) >> 30) & 0x3]


def ignition_quality(code: int) -> str:
    """Ignition 8 QualityCode (also Sparkplug from Ignition).

    The top two bits of the 32-bit code are the level (Good, Uncertain, Bad, Error);
    codes given as the bare subcode use its range: 0-255 good (192 = Good),
    256-511 uncertain, 512 and above bad or error.
    """
    u = code & 0xFFFF_FFFF
    level = u >> 30
    if level:
        return _LEVELS[level]
    sub = u & 0xFFFF
    if sub < 256:
        return GOOD
    if sub < 512:
        return UNCERTAIN
    return BAD


def da_quality(code: int) -> str:
    """OPC DA style 8-bit quality (bits 6-7): 0xC0 good, 0x40 uncertain, 0x00 bad."""
    bits = code & 0xC0
    return GOOD if bits == 0xC0 else UNCERTAIN if bits == 0x40 else BAD


def modbus_quality(code: int) -> str:
    """0 = the read succeeded; anything else is an exception or transport code."""
    return GOOD if code == 0 else BAD


def sparkplug_quality(code: int) -> str:
    """Sparkplug's quality property: Ignition 7 style 0 = bad, 192 = good, 500 = stale (bad),
    otherwise an Ignition 8 QualityCode."""
    if code in (0, 500):
        return BAD
    return ignition_quality(code)


_RANK = {GOOD: 0, UNCERTAIN: 1, BAD: 2}

_BY_PROTOCOL = {
    "opcua": opcua_quality,
    "http": ignition_quality,
    "sparkplug": sparkplug_quality,
    "mqtt": da_quality,
    "modbus": modbus_quality,
}


def text_quality(text: str) -> str | None:
    t = text.strip().upper()
    if t.startswith("GOOD"):
        return GOOD
    if t.startswith("UNCERTAIN"):
        return UNCERTAIN
    if t.startswith(("BAD", "ERROR")):
        return BAD
    return None


def map_quality(protocol: str, text: str | None, code: int | None) -> str:
    """The worse of what the protocol's code and the quality text say; GOOD when neither is given.

    Taking the worse one matters: Ignition's script handler fills in `qualityCode` 192
    when an event has none, while its `quality` text may say `Bad_Stale`. Text that is
    given but means nothing known counts as UNCERTAIN. A reading with no quality at all
    is GOOD (Sparkplug publishers routinely omit the quality of good values).
    """
    levels = []
    if code is not None:
        levels.append(_BY_PROTOCOL.get(protocol, da_quality)(code))
    if text:
        levels.append(text_quality(text) or UNCERTAIN)
    if not levels:
        return GOOD
    return max(levels, key=_RANK.__getitem__)
