"""Status codes and the exceptions every public call raises.

`Status` carries Zircon's names (without the ``ZX_`` prefix) and Zircon's values so that a
reader of the Fuchsia documentation recognises every failure.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    OK = 0
    ERR_INTERNAL = -1
    ERR_NOT_SUPPORTED = -2
    ERR_NO_RESOURCES = -3
    ERR_NO_MEMORY = -4
    ERR_INVALID_ARGS = -10
    ERR_BAD_HANDLE = -11
    ERR_WRONG_TYPE = -12
    ERR_OUT_OF_RANGE = -14
    ERR_BUFFER_TOO_SMALL = -15
    ERR_BAD_STATE = -20
    ERR_TIMED_OUT = -21
    ERR_SHOULD_WAIT = -22
    ERR_CANCELED = -23
    ERR_PEER_CLOSED = -24
    ERR_NOT_FOUND = -25
    ERR_ALREADY_EXISTS = -26
    ERR_UNAVAILABLE = -28
    ERR_ACCESS_DENIED = -30
    ERR_IO = -40
    ERR_IO_REFUSED = -41
    ERR_IO_DATA_INTEGRITY = -42
    ERR_IO_DATA_LOSS = -43
    ERR_IO_NOT_PRESENT = -44
    ERR_IO_OVERRUN = -45
    ERR_IO_MISSED_DEADLINE = -46
    ERR_IO_INVALID = -47
    ERR_NO_SPACE = -54


class ZxError(Exception):
    """A public call failed. `status` says how, the message says what was wrong."""

    def __init__(self, status: Status, message: str = "") -> None:
        self.status = Status(status)
        self.message = message
        super().__init__(f"{self.status.name}: {message}" if message else self.status.name)

    def __reduce__(self) -> tuple[type, tuple[Status, str]]:
        # Exceptions cross process boundaries in the fuzz runner; keep them picklable.
        return (type(self), (self.status, self.message))


class InvariantError(AssertionError):
    """The model's own invariants are broken (raised by `vmo.debug.validate`)."""
