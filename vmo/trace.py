"""The event trace: what the kernel does, as small frozen values (``k.trace()``).

``with k.trace() as t:`` collects events in ``t.events``; ``k.trace(callback)`` calls
``callback(event)`` for each instead (stop it with ``close()``, or use it as a context manager
too). Each event is a frozen attrs value whose class names its ``kind`` (a string such as
``"fork"``), carrying koids (0 where no VMO stands for the node: a hidden node, a node whose
VMO closed), node ids (`CowPages.id`, stable for a node's life) and page offsets and lengths
in pages (never bytes). ``to_dict()`` gives a JSON-ready dict with the ``kind``.

Cost when no trace is active: the hooks in the kernel read one attribute (``tracer`` of the
kernel state) and compare it with ``None``; no event is built. ``bench/bench_core.py`` measures
it (see the README's numbers).

Hooks call `Tracer.emit` with an event class and its fields; the tracer stamps each event with
a sequence number (per kernel, from 1) and a monotonic time, and hands it to every active
trace. Events are emitted with the hierarchy lock held, so a callback must not call back into
the kernel (record, print, or queue the event instead).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, ClassVar

import attrs

from vmo.errors import Status, ZxError

if TYPE_CHECKING:
    from vmo.cow_pages import CowPages, KernelState

#: The environment variable `vmo trace` sets: every kernel created in the process then writes
#: its events, as JSON lines, to the file it names.
TRACE_FILE_ENV = "VMO_TRACE_FILE"


@attrs.frozen(kw_only=True)
class TraceEvent:
    """Fields every event has: ``seq`` (order within the kernel) and ``time`` (monotonic s)."""

    kind: ClassVar[str] = "event"
    seq: int
    time: float = attrs.field(eq=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        d.update(attrs.asdict(self, recurse=False))
        return d

    def key(self) -> tuple[Any, ...]:
        """The event without its stamp (``seq``, ``time``): what tests compare."""
        d = attrs.asdict(self, recurse=False)
        d.pop("seq")
        d.pop("time")
        return (self.kind, *d.values())


@attrs.frozen(kw_only=True)
class VmoCreate(TraceEvent):
    """A VMO handle was created for ``node`` (a root, a clone or a slice)."""

    kind: ClassVar[str] = "vmo_create"
    koid: int
    node: int
    size: int  # pages
    parent_koid: int = 0


@attrs.frozen(kw_only=True)
class VmoClose(TraceEvent):
    kind: ClassVar[str] = "vmo_close"
    koid: int
    node: int


@attrs.frozen(kw_only=True)
class Clone(TraceEvent):
    """``koid`` got a child ``child_koid``. A snapshot turns the parent's node into the hidden
    node ``hidden``, whose children are ``left`` (the parent VMO's new node) and ``right`` (the
    child's node); other kinds hang ``right`` below a visible node (``hidden`` and ``left`` 0)."""

    kind: ClassVar[str] = "clone"
    koid: int
    child_koid: int
    mode: str  # "snapshot", "at_least_on_write" or "slice"
    hidden: int
    left: int
    right: int
    offset: int  # in the parent VMO, pages
    length: int


@attrs.frozen(kw_only=True)
class Fork(TraceEvent):
    """A page of hidden node ``node`` at ``offset`` was copied one level down into ``to_node``
    at ``to_offset``; the original keeps the split bit ``split`` ("left" or "right")."""

    kind: ClassVar[str] = "fork"
    node: int
    offset: int
    to_node: int
    to_offset: int
    split: str
    koid: int  # of ``to_node``, 0 if hidden


@attrs.frozen(kw_only=True)
class Migrate(TraceEvent):
    """A page only one side could still see moved from hidden ``node`` into ``to_node``."""

    kind: ClassVar[str] = "migrate"
    node: int
    offset: int
    to_node: int
    to_offset: int
    koid: int


@attrs.frozen(kw_only=True)
class Marker(TraceEvent):
    """A zero marker was added (a leaf hides a page it can see in a hidden ancestor)."""

    kind: ClassVar[str] = "marker"
    node: int
    offset: int
    added: bool
    koid: int


@attrs.frozen(kw_only=True)
class Release(TraceEvent):
    """``node`` stopped seeing ``[offset, offset + length)`` (its own offsets) of ``parent``;
    ``freed`` pages of the parent nobody could see any more were freed."""

    kind: ClassVar[str] = "release"
    node: int
    parent: int
    offset: int
    length: int
    freed: int


@attrs.frozen(kw_only=True)
class Merge(TraceEvent):
    """Hidden ``node`` lost child ``removed`` and folded into its other child ``child``:
    ``moved`` pages moved into it, ``freed`` were dropped."""

    kind: ClassVar[str] = "merge"
    node: int
    child: int
    removed: int
    moved: int
    freed: int
    koid: int  # of ``child``


@attrs.frozen(kw_only=True)
class PageRequestEvent(TraceEvent):
    """A request to the page source: ``action`` "issued" (a new request), "failed"
    (``status`` names why) or "timed_out"."""

    kind: ClassVar[str] = "page_request"
    node: int
    koid: int
    offset: int
    length: int
    command: str  # "read" or "dirty" ("any" for a failure of every kind)
    action: str
    status: str = "OK"


@attrs.frozen(kw_only=True)
class Supply(TraceEvent):
    kind: ClassVar[str] = "supply"
    node: int
    koid: int
    offset: int
    length: int


@attrs.frozen(kw_only=True)
class Dirty(TraceEvent):
    """Pages of a pager-backed VMO became Dirty."""

    kind: ClassVar[str] = "dirty"
    node: int
    koid: int
    offset: int
    length: int


@attrs.frozen(kw_only=True)
class Writeback(TraceEvent):
    kind: ClassVar[str] = "writeback"
    node: int
    koid: int
    offset: int
    length: int
    phase: str  # "begin" or "end"


@attrs.frozen(kw_only=True)
class Evict(TraceEvent):
    kind: ClassVar[str] = "evict"
    node: int
    koid: int
    offset: int


@attrs.frozen(kw_only=True)
class Discard(TraceEvent):
    kind: ClassVar[str] = "discard"
    node: int
    koid: int
    pages: int


@attrs.frozen(kw_only=True)
class Fault(TraceEvent):
    """A page fault of a mapping, resolved by the fault handler."""

    kind: ClassVar[str] = "fault"
    koid: int
    offset: int  # page offset in the VMO
    access: str  # "read", "write" or "write_protect"
    resolution: str  # what the handler did, e.g. "installed", "error"
    latency_us: float


@attrs.frozen(kw_only=True)
class SwapMove(TraceEvent):
    """The swap source moved pages: ``move`` is "stage" (arena to staging), "swap_out"
    (staging to the swap file), "swap_in" (back into the arena) or "trim"."""

    kind: ClassVar[str] = "swap"
    move: str
    pages: int
    koid: int = 0


EVENT_CLASSES: tuple[type[TraceEvent], ...] = (
    VmoCreate, VmoClose, Clone, Fork, Migrate, Marker, Release, Merge, PageRequestEvent,
    Supply, Dirty, Writeback, Evict, Discard, Fault, SwapMove)
EVENT_KINDS: dict[str, type[TraceEvent]] = {c.kind: c for c in EVENT_CLASSES}


def event_from_dict(d: dict[str, Any]) -> TraceEvent:
    """The event `TraceEvent.to_dict` gave (for replaying JSON lines); ``ZxError`` if the
    dict is not one."""
    if not isinstance(d, dict) or d.get("kind") not in EVENT_KINDS:
        raise ZxError(Status.ERR_INVALID_ARGS, f"not a trace event: {str(d)[:80]}")
    cls = EVENT_KINDS[d["kind"]]
    fields = {k: v for k, v in d.items() if k != "kind"}
    try:
        return cls(**fields)
    except TypeError as e:
        raise ZxError(Status.ERR_INVALID_ARGS, f"bad {d['kind']} event: {e}") from None


def koid_of(node: CowPages) -> int:
    """The koid of the VMO ``node`` stands for, 0 for none."""
    ref = node.paged_ref
    return ref.koid if ref is not None else 0


class Tracer:
    """The dispatcher a kernel holds while at least one trace is active."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.sinks: list[Callable[[TraceEvent], None]] = []

    def emit(self, cls: type[TraceEvent], **fields: Any) -> None:
        with self._lock:
            event = cls(seq=next(self._seq), time=time.monotonic(), **fields)
            sinks = list(self.sinks)
        for sink in sinks:
            sink(event)


class Trace:
    """One active trace of one kernel (see the module docstring). Idempotent ``close()``."""

    def __init__(self, state: KernelState,
                 callback: Callable[[TraceEvent], None] | None = None) -> None:
        if callback is not None and not callable(callback):
            raise ZxError(Status.ERR_INVALID_ARGS, "callback must be callable or None")
        self.events: list[TraceEvent] = []
        self._state = state
        self._sink: Callable[[TraceEvent], None] = (
            callback if callback is not None else self.events.append)
        self.closed = False
        with _attach_lock:
            tracer = state.tracer
            if tracer is None:
                tracer = Tracer()
            tracer.sinks.append(self._sink)
            state.tracer = tracer

    def close(self) -> None:
        """Stop recording. Events already recorded stay in ``events``."""
        with _attach_lock:
            if self.closed:
                return
            self.closed = True
            tracer = self._state.tracer
            if tracer is None:
                return
            tracer.sinks.remove(self._sink)
            if not tracer.sinks:
                self._state.tracer = None  # back to the one-compare, no-cost path

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_attach_lock = threading.Lock()


class JsonLinesWriter:
    """A trace sink writing one JSON object per line to ``path`` (appending), each with the
    kernel's number in the process (``kernel``), flushed per line so a crash loses nothing."""

    _numbers = itertools.count(1)

    def __init__(self, path: str) -> None:
        self.number = next(self._numbers)
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115
        # The file closes with the writer (its kernel's trace), at the latest at exit.
        self._finalizer = weakref.finalize(self, _close_file, self._file)

    def __call__(self, event: TraceEvent) -> None:
        d = event.to_dict()
        d["kernel"] = self.number
        line = json.dumps(d) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file = None
        self._finalizer()


def _close_file(f: IO[str]) -> None:
    f.close()


def trace_from_environment(state: KernelState) -> Trace | None:
    """Start a JSON-lines trace of a new kernel when `vmo trace` asked for one."""
    path = os.environ.get(TRACE_FILE_ENV)
    if not path:
        return None
    try:
        writer = JsonLinesWriter(path)
    except OSError:
        return None  # an unwritable trace file must not break the traced program
    trace = Trace(state, writer)
    trace._writer = writer  # type: ignore[attr-defined]  # closed with the kernel
    return trace


# ---------------------------------------------------------------------------- kernel hooks
# Called by the hierarchy layer only when a tracer is active (the caller tests
# ``kernel.tracer is not None``), so that each hook there stays one line.

def forked(tracer: Tracer, owner: CowPages, offset: int, child: CowPages, child_offset: int,
           side: int) -> None:
    from vmo.pmm import SPLIT_LEFT

    tracer.emit(Fork, node=owner.id, offset=offset, to_node=child.id, to_offset=child_offset,
                split="left" if side == SPLIT_LEFT else "right", koid=koid_of(child))


def migrated(tracer: Tracer, owner: CowPages, offset: int, child: CowPages,
             child_offset: int) -> None:
    tracer.emit(Migrate, node=owner.id, offset=offset, to_node=child.id,
                to_offset=child_offset, koid=koid_of(child))


def marker(tracer: Tracer, node: CowPages, offset: int, added: bool) -> None:
    tracer.emit(Marker, node=node.id, offset=offset, added=added, koid=koid_of(node))


def released(tracer: Tracer, node: CowPages, start: int, end: int, freed: int) -> None:
    assert node.parent is not None
    tracer.emit(Release, node=node.id, parent=node.parent.id, offset=start,
                length=end - start, freed=freed)


class merging:  # noqa: N801 - used as a context manager, like a function
    """Around a merge: counts the pages that moved into the child and the frames freed."""

    def __init__(self, tracer: Tracer, hidden: CowPages, child: CowPages,
                 removed: CowPages) -> None:
        self.tracer, self.hidden, self.child, self.removed = tracer, hidden, child, removed

    def __enter__(self) -> None:
        self.child_pages = self.child.page_list.count_pages()
        self.free_frames = self.hidden.pmm.free_frames

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            return
        self.tracer.emit(Merge, node=self.hidden.id, child=self.child.id,
                         removed=self.removed.id,
                         moved=self.child.page_list.count_pages() - self.child_pages,
                         freed=self.hidden.pmm.free_frames - self.free_frames,
                         koid=koid_of(self.child))


def discarded(tracer: Tracer, node: CowPages, pages: int) -> None:
    tracer.emit(Discard, node=node.id, koid=koid_of(node), pages=pages)


def evicted(tracer: Tracer, node: CowPages, offset: int) -> None:
    tracer.emit(Evict, node=node.id, koid=koid_of(node), offset=offset)


def dirtied(tracer: Tracer, node: CowPages, offset: int, length: int = 1) -> None:
    tracer.emit(Dirty, node=node.id, koid=koid_of(node), offset=offset, length=length)


def request(tracer: Tracer, node: CowPages, offset: int, length: int, command: str,
            action: str, status: Status = Status.OK) -> None:
    tracer.emit(PageRequestEvent, node=node.id, koid=koid_of(node), offset=offset,
                length=length, command=command, action=action, status=status.name)


def supplied(tracer: Tracer, node: CowPages, offset: int, length: int) -> None:
    tracer.emit(Supply, node=node.id, koid=koid_of(node), offset=offset, length=length)


def writeback(tracer: Tracer, node: CowPages, offset: int, length: int, phase: str) -> None:
    tracer.emit(Writeback, node=node.id, koid=koid_of(node), offset=offset, length=length,
                phase=phase)


def cloned(tracer: Tracer, parent: Any, child: Any, mode: str, offset: int, size: int) -> None:
    """``parent`` (a `Vmo`) got ``child``; ``mode`` is the `ChildOptions` kind's name."""
    node = child.cow
    up = node.parent
    hidden = up is not None and up.hidden and up.children[1] is node
    tracer.emit(Clone, koid=parent.koid, child_koid=child.koid,
                mode={"SNAPSHOT_AT_LEAST_ON_WRITE": "at_least_on_write"}.get(mode, mode.lower()),
                hidden=up.id if hidden else 0, left=up.children[0].id if hidden else 0,
                right=node.id, offset=_pages(offset),
                length=_pages(size))


def _pages(nbytes: int) -> int:
    from vmo.pmm import PAGE_SIZE

    return nbytes // PAGE_SIZE


def faulted(tracer: Tracer, mapping: Any, page: int, write: int, wp: int, resolved: bool,
            spent_ns: int) -> None:
    """A fault of ``mapping`` at its ``page``: resolved on the handler thread ("installed"),
    or handed to a worker to wait for a page source ("deferred")."""
    from vmo.pmm import PAGE_SIZE

    tracer.emit(Fault, koid=mapping.vmo.koid, offset=mapping.offset // PAGE_SIZE + page,
                access="write_protect" if wp else ("write" if write else "read"),
                resolution="installed" if resolved else "deferred",
                latency_us=round(spent_ns / 1000, 3))
