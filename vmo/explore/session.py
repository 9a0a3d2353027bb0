"""A live kernel the explorer's forms drive, and the timeline of what each operation did.

`Session.apply(op, args)` checks the form's arguments (strings from a web form: numbers in
decimal or ``0x`` hex, bytes), runs one public call under a trace, validates the kernel, and
appends a `Step`: the operation, its outcome (the `ZxError` status and message when it
failed), the events it caused and the picture of the kernel afterwards (`state.kernel_state`).
A bad argument is reported in the step like any other ``ZxError``; nothing an operation's
arguments can hold makes it raise anything else, and a failed call leaves the kernel valid
(the step says so: ``valid`` is `vmo.debug.validate`'s verdict).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from vmo import debug
from vmo.errors import InvariantError, Status, ZxError
from vmo.explore.state import kernel_state
from vmo.kernel import Kernel
from vmo.pager.user_pager import Pager
from vmo.pmm import PAGE_SIZE
from vmo.types import ChildOptions, VmoOp, VmoOptions
from vmo.vm_object import Vmo

#: The explorer's kernel: small, so that its frames fit on the page.
SESSION_MEMORY = 4 << 20
#: How long an access waits for a pager that never answers (the explorer's pager is the user,
#: who supplies through a form; a read of a page not supplied fails with ERR_TIMED_OUT).
PAGE_REQUEST_TIMEOUT = 0.2
MAX_STEPS = 500
MAX_TEXT = 4 * PAGE_SIZE

CHILD_KINDS = {
    "snapshot": ChildOptions.SNAPSHOT,
    "at_least_on_write": ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE,
    "slice": ChildOptions.SLICE,
}
#: The operations the forms can ask for (`Session.apply`).
OP_NAMES = ("create", "write", "read", "child", "snapshot", "slice", "close", "resize",
            "op_range", "pager_create_vmo", "supply", "name")
OPS_ALLOWED = ("COMMIT", "DECOMMIT", "ZERO", "LOCK", "TRY_LOCK", "UNLOCK", "DONT_NEED",
               "ALWAYS_NEED", "PREFETCH")


def _int(args: dict[str, Any], name: str, default: int | None = None) -> int:
    raw = args.get(name, default)
    if raw is None or raw == "":
        if default is not None:
            return default
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} is required")
    if isinstance(raw, bool):
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} must be a number, not {raw!r}")
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip(), 0)
    except ValueError:
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"{name} must be a number (decimal or 0x hex), not {str(raw)[:40]!r}"
                      ) from None


def _text(args: dict[str, Any], name: str) -> bytes:
    raw = args.get(name, "")
    if not isinstance(raw, str):
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} must be text")
    data = raw.encode("utf-8", "replace")
    if len(data) > MAX_TEXT:
        raise ZxError(Status.ERR_INVALID_ARGS, f"{name} is longer than {MAX_TEXT} bytes")
    return data


def _flag(args: dict[str, Any], name: str) -> bool:
    return str(args.get(name, "")).lower() in ("1", "true", "on", "yes")


class Session:
    """One live kernel, its VMOs by koid, one pager, and the timeline of steps."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kernel = Kernel(SESSION_MEMORY, page_request_timeout=PAGE_REQUEST_TIMEOUT)
        self.vmos: dict[int, Vmo] = {}
        self.pager: Pager | None = None
        self.steps: list[dict[str, Any]] = []
        self._record("start", {}, None, [], "a fresh kernel of "
                     f"{SESSION_MEMORY >> 20} MiB")
        self.ops: dict[str, Callable[[dict[str, Any]], str]] = {
            "create": self._create, "write": self._write, "read": self._read,
            "child": self._child, "snapshot": self._snapshot, "slice": self._slice,
            "close": self._close, "resize": self._resize, "op_range": self._op_range,
            "pager_create_vmo": self._pager_create_vmo, "supply": self._supply,
            "name": self._name,
        }
        assert tuple(self.ops) == OP_NAMES

    # ---------------------------------------------------------------- steps

    def _record(self, op: str, args: dict[str, Any], error: ZxError | None,
                events: list[dict[str, Any]], result: str) -> dict[str, Any]:
        valid, problem = True, ""
        try:
            debug.validate(self.kernel)
        except InvariantError as e:
            valid, problem = False, str(e)
        step = {
            "index": len(self.steps), "op": op,
            "args": {k: str(v)[:80] for k, v in args.items()},
            "ok": error is None, "result": result,
            "status": error.status.name if error is not None else "OK",
            "error": str(error) if error is not None else "",
            "events": events, "valid": valid, "problem": problem,
            "state": kernel_state(self.kernel),
        }
        self.steps.append(step)
        if len(self.steps) > MAX_STEPS:
            del self.steps[1]  # keep the start and the most recent steps
            for i, s in enumerate(self.steps):
                s["index"] = i
        return step

    def apply(self, op: Any, args: Any) -> dict[str, Any]:
        """Run one form operation; returns its step (see the module docstring)."""
        if not isinstance(args, dict):
            args = {}
        with self.lock:
            fn = self.ops.get(op) if isinstance(op, str) else None
            events: list[dict[str, Any]] = []
            error: ZxError | None = None
            result = ""
            if fn is None:
                error = ZxError(Status.ERR_NOT_SUPPORTED,
                                f"unknown operation {str(op)[:40]!r}; one of {sorted(self.ops)}")
            else:
                with self.kernel.trace(lambda e: events.append(e.to_dict())):
                    try:
                        result = fn(args)
                    except ZxError as e:
                        error = e
                    except Exception as e:  # noqa: BLE001 - a bug: show it, keep serving
                        error = ZxError(Status.ERR_INTERNAL,
                                        f"internal error: {type(e).__name__}: {e}")
            return self._record(str(op)[:40], args, error, events, result)

    def close(self) -> None:
        with self.lock:
            self.kernel.close()

    # ---------------------------------------------------------------- operations

    def _vmo(self, args: dict[str, Any], name: str = "koid") -> Vmo:
        koid = _int(args, name)
        v = self.vmos.get(koid)
        if v is None or v.closed:
            raise ZxError(Status.ERR_BAD_HANDLE, f"no open VMO with koid {koid}")
        return v

    def _create(self, args: dict[str, Any]) -> str:
        opts = VmoOptions(0)
        if _flag(args, "resizable"):
            opts |= VmoOptions.RESIZABLE
        if _flag(args, "discardable"):
            opts |= VmoOptions.DISCARDABLE
        v = self.kernel.vmo_create(_int(args, "size"), opts)
        self.vmos[v.koid] = v
        return f"koid {v.koid}"

    def _write(self, args: dict[str, Any]) -> str:
        v = self._vmo(args)
        data = _text(args, "text")
        v.write(data, _int(args, "offset", 0))
        return f"{len(data)} bytes written"

    def _read(self, args: dict[str, Any]) -> str:
        v = self._vmo(args)
        length = _int(args, "length", 16)
        if length > MAX_TEXT:
            raise ZxError(Status.ERR_INVALID_ARGS, f"length is more than {MAX_TEXT} bytes")
        data = v.read(length, _int(args, "offset", 0))
        return repr(data)

    def _child(self, args: dict[str, Any]) -> str:
        v = self._vmo(args)
        kind = args.get("kind", "snapshot")
        options = CHILD_KINDS.get(kind) if isinstance(kind, str) else None
        if options is None:
            raise ZxError(Status.ERR_INVALID_ARGS, f"kind must be one of {sorted(CHILD_KINDS)}")
        if _flag(args, "resizable"):
            options |= ChildOptions.RESIZABLE
        size = _int(args, "size", v.get_size())
        child = v.create_child(options, _int(args, "offset", 0), size)
        self.vmos[child.koid] = child
        return f"koid {child.koid}"

    def _snapshot(self, args: dict[str, Any]) -> str:
        return self._child({**args, "kind": "snapshot"})

    def _slice(self, args: dict[str, Any]) -> str:
        return self._child({**args, "kind": "slice"})

    def _close(self, args: dict[str, Any]) -> str:
        v = self._vmo(args)
        v.close()
        del self.vmos[v.koid]
        return f"koid {v.koid} closed"

    def _resize(self, args: dict[str, Any]) -> str:
        self._vmo(args).set_size(_int(args, "size"))
        return "resized"

    def _op_range(self, args: dict[str, Any]) -> str:
        v = self._vmo(args)
        name = args.get("op")
        if not isinstance(name, str) or name.upper() not in OPS_ALLOWED:
            raise ZxError(Status.ERR_INVALID_ARGS, f"op must be one of {list(OPS_ALLOWED)}")
        out = v.op_range(VmoOp[name.upper()], _int(args, "offset", 0),
                         _int(args, "size", v.get_size()))
        return "" if out is None else repr(out)

    def _name(self, args: dict[str, Any]) -> str:
        v = self._vmo(args)
        name = args.get("name", "")
        if not isinstance(name, str):
            raise ZxError(Status.ERR_INVALID_ARGS, "name must be text")
        v.name = name
        return f"named {name!r}"

    def _pager_create_vmo(self, args: dict[str, Any]) -> str:
        if self.pager is None:
            self.pager = self.kernel.pager_create()
        v = self.pager.create_vmo(_int(args, "size"))
        self.vmos[v.koid] = v
        return f"koid {v.koid} (pager-backed: supply its pages with the supply form)"

    def _supply(self, args: dict[str, Any]) -> str:
        v = self._vmo(args)
        if self.pager is None:
            raise ZxError(Status.ERR_BAD_STATE, "no pager yet: create a pager VMO first")
        offset = _int(args, "offset", 0)
        length = _int(args, "length", PAGE_SIZE)
        if length > 64 * PAGE_SIZE:
            raise ZxError(Status.ERR_INVALID_ARGS, "supply at most 64 pages at a time here")
        fill = _text(args, "text") or b"\0"
        aux = self.kernel.vmo_create(length)
        try:
            if length:
                aux.write((fill * (length // len(fill) + 1))[:length])
            self.pager.supply_pages(v, offset, length, aux, 0)
        finally:
            aux.close()
        return f"{length} bytes supplied"


# The steps `vmo explore --demo` opens on: the demo's tour, as form operations.
DEMO_OPS: list[tuple[str, dict[str, Any]]] = [
    ("create", {"size": 4 * PAGE_SIZE}),
    ("write", {"koid": 1, "offset": 0, "text": "page zero"}),
    ("write", {"koid": 1, "offset": PAGE_SIZE, "text": "page one"}),
    ("write", {"koid": 1, "offset": 2 * PAGE_SIZE, "text": "page two"}),
    ("snapshot", {"koid": 1}),
    ("write", {"koid": 1, "offset": 0, "text": "parent writes"}),
    ("write", {"koid": 2, "offset": 0, "text": "child writes"}),
    ("write", {"koid": 2, "offset": PAGE_SIZE, "text": "child again"}),
    ("snapshot", {"koid": 2, "offset": PAGE_SIZE, "size": 2 * PAGE_SIZE}),
    ("write", {"koid": 3, "offset": PAGE_SIZE, "text": "grandchild"}),
    ("close", {"koid": 2}),
    ("slice", {"koid": 1, "offset": PAGE_SIZE, "size": PAGE_SIZE}),
    ("write", {"koid": 4, "offset": 0, "text": "through the slice"}),
    ("op_range", {"koid": 3, "op": "ZERO", "offset": 0, "size": PAGE_SIZE}),
    ("close", {"koid": 3}),
    ("pager_create_vmo", {"size": 2 * PAGE_SIZE}),
    ("supply", {"koid": 5, "offset": 0, "length": PAGE_SIZE, "text": "from the pager "}),
    ("child", {"koid": 5, "kind": "at_least_on_write"}),  # koid 6 was the supply's aux VMO
    ("write", {"koid": 7, "offset": 0, "text": "aow child"}),
]


def demo_session() -> Session:
    s = Session()
    for op, args in DEMO_OPS:
        s.apply(op, args)
    return s
