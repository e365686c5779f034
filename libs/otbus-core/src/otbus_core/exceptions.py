"""One exception tree for otbus; third-party errors are translated at the boundary."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DecodeError",
    "FatalError",
    "InvalidTenant",
    "OtbusError",
    "PoisonRecord",
    "TransientError",
]


class OtbusError(Exception):
    """Root of every otbus error."""


class ConfigError(OtbusError):
    """Invalid configuration; the message names the key."""


class InvalidTenant(OtbusError, ValueError):
    """A tenant id that does not match the tenant pattern."""


class DecodeError(OtbusError):
    """Bytes that are not a record we can read."""


class PoisonRecord(OtbusError):
    """A record that can never be processed; it goes to the DLQ with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FatalError(OtbusError):
    """A state no retry gets out of; the process should exit and be restarted."""


class TransientError(OtbusError):
    """A failure worth retrying (broker or database briefly away)."""
