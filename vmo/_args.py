"""Argument checks shared by the public calls: each failure is a `ZxError` naming the argument.

Numbers follow the syscall ABI: offsets and sizes are unsigned 64-bit. A negative Python int is
what a C caller gets by passing a negative value, a huge unsigned one, so it is out of range
rather than a type error; a value that is not an int at all is ``ERR_INVALID_ARGS``.
"""

from __future__ import annotations

import enum
import fcntl
import os
from typing import Any, TypeVar

from vmo.errors import Status, ZxError
from vmo.pmm import PAGE_SIZE

U64 = 1 << 64
MAX_SIZE = U64 - PAGE_SIZE  # the largest size that rounds up to whole pages without overflow

F = TypeVar("F", bound=enum.IntFlag)
E = TypeVar("E", bound=enum.IntEnum)


def u64(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"{name} must be an int, not {type(value).__name__}")
    if value < 0 or value >= U64:
        raise ZxError(Status.ERR_OUT_OF_RANGE, f"{name} {value} is not an unsigned 64-bit value")
    return value


def page_size_round(name: str, value: Any) -> int:
    """A byte size rounded up to whole pages; unrepresentable sizes are ERR_OUT_OF_RANGE."""
    v = u64(name, value)
    if v > MAX_SIZE:
        raise ZxError(Status.ERR_OUT_OF_RANGE, f"{name} {v:#x} cannot be rounded up to a page")
    return (v + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def aligned(name: str, value: int) -> int:
    if value % PAGE_SIZE:
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} {value:#x} is not page aligned")
    return value


def flags(name: str, value: Any, kind: type[F]) -> F:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"{name} must be {kind.__name__}, not {type(value).__name__}")
    known = 0
    for member in kind:
        known |= int(member)
    if value < 0 or value & ~known:
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} {value:#x} has unknown option bits")
    return kind(value)


_MEMBERS: dict[type, dict[int, Any]] = {}


def enum_value(name: str, value: Any, kind: type[E]) -> E:
    members = _MEMBERS.get(kind)
    if members is None:
        members = _MEMBERS[kind] = {int(m): m for m in kind}
    if type(value) is int or type(value) is kind:
        member = members.get(value)
        if member is not None:
            return member
    if isinstance(value, bool) or not isinstance(value, int):
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"{name} must be {kind.__name__}, not {type(value).__name__}")
    try:
        return kind(value)
    except ValueError:
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} {value} is not a {kind.__name__}") from None


def in_range(what: Any, offset: int, length: int, size: int) -> None:
    """``[offset, offset + length)`` must lie inside ``[0, size)``. ``what`` names the range in
    the message (an enum member stands for its name, looked up only on failure)."""
    if offset + length > size or offset + length >= U64:
        what = getattr(what, "name", what)
        raise ZxError(Status.ERR_OUT_OF_RANGE,
                      f"{what} [{offset:#x}, {offset + length:#x}) is past the end {size:#x}")


def data_view(name: str, data: Any) -> memoryview:
    try:
        view = memoryview(data)
    except TypeError:
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"{name} must be bytes-like, not {type(data).__name__}") from None
    if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
        try:
            view = view.cast("B")
        except TypeError:
            view = memoryview(view.tobytes())
    return view


#: Timeouts at least this long (about 31 years) mean "wait forever" (``None``): the thread
#: primitives cannot wait longer, and ``ZX_TIME_INFINITE`` is what such values mean.
FOREVER = 1e9


def timeout(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} must be a number of seconds or None")
    if value < 0:
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} {value} is negative")
    if value >= FOREVER:
        return None
    return float(value)


def name(value: Any, max_bytes: int) -> str:
    """A ``ZX_PROP_NAME``: a str, truncated to ``max_bytes`` of UTF-8 at a character edge."""
    if not isinstance(value, str):
        raise ZxError(Status.ERR_INVALID_ARGS, f"name must be a str, not {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ZxError(Status.ERR_INVALID_ARGS, f"name is not encodable as UTF-8: {e}") from None
    return raw[:max_bytes].decode("utf-8", errors="ignore").split("\0", 1)[0]


def fd(name: str, value: Any, *, read: bool = False, write: bool = False) -> int:
    """An open file descriptor number: ``ERR_INVALID_ARGS`` for what cannot be one,
    ``ERR_BAD_HANDLE`` for a number that is not open (an fd is this host's handle),
    ``ERR_ACCESS_DENIED`` if it was not opened for reading (``read``) or writing (``write``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} must be an int, not {type(value).__name__}")
    if value < 0 or value >= 1 << 31:
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} {value} is not a file descriptor")
    try:
        mode = fcntl.fcntl(value, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as e:
        raise ZxError(Status.ERR_BAD_HANDLE, f"{name} {value} is not open: {e.strerror}") from None
    if read or write:
        if read and mode == os.O_WRONLY:
            raise ZxError(Status.ERR_ACCESS_DENIED, f"{name} {value} is not open for reading")
        if write and mode == os.O_RDONLY:
            raise ZxError(Status.ERR_ACCESS_DENIED, f"{name} {value} is not open for writing")
    return value
