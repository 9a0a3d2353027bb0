"""The user pager (``zx_pager_*``): user code supplies the content of pager-backed VMOs.

A `Pager` creates VMOs whose content it provides. When a VMO needs a page it does not hold, a
`PageRequest` (READ) goes to the pager; the pager answers with `Pager.supply_pages` (moving pages
out of an auxiliary VMO it filled) or fails it with ``op_range(PagerOp.FAIL, ...)``. A VMO created
with ``TRAP_DIRTY`` also sends a DIRTY request before a Clean page is first written; the pager
acknowledges with ``op_range(PagerOp.DIRTY, ...)``. Written pages are found again with
`Pager.query_dirty_ranges` and cleaned with ``WRITEBACK_BEGIN`` / ``WRITEBACK_END``.

Requests reach the pager in one of two ways:

- handler mode, ``k.pager_create(handler)``: ``handler(request)`` is called on the thread that
  needs the page, with no lock held; the access retries once the request is resolved.
- queue mode, ``k.pager_create()``: requests queue on the pager's port; another thread takes them
  with `Pager.get_request` and resolves them while the needing thread blocks (at most the
  kernel's ``page_request_timeout``, then ``ERR_TIMED_OUT``).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

import vmo._args as _args
import vmo.trace as trace
from vmo.cow_pages import MAX_SUPPLY_PAGES, CowPages, fill_frames_from_fd
from vmo.errors import Status, ZxError
from vmo.kernel import install_pager_factory
from vmo.page_list import EMPTY, MARKER
from vmo.pager.source import PageRequestCommand, Request, RequestTracker
from vmo.pmm import PAGE_SIZE
from vmo.vm_object import Vmo

if TYPE_CHECKING:
    from vmo.kernel import Kernel


class PagerVmoOptions(enum.IntFlag):
    RESIZABLE = 1 << 1
    TRAP_DIRTY = 1 << 3


class PagerOp(enum.IntEnum):
    FAIL = 1
    DIRTY = 2
    WRITEBACK_BEGIN = 3
    WRITEBACK_END = 4


#: ``data`` flag of WRITEBACK_BEGIN: the range is being written back as zeros.
WRITEBACK_BEGIN_ZERO_RANGE = 1


class DirtyRangeOptions(enum.IntFlag):
    IS_ZERO = 1 << 0


@attrs.define(frozen=True)
class DirtyRange:
    offset: int
    length: int
    options: DirtyRangeOptions


@attrs.define(frozen=True)
class PagerVmoStats:
    modified: bool


@attrs.define(frozen=True)
class PageRequest:
    """A packet on the pager's port (``zx_packet_page_request_t``); offsets in bytes."""

    command: PageRequestCommand
    vmo: Vmo
    offset: int
    length: int


#: The statuses ``PagerOp.FAIL`` may carry (Zircon's ``IsValidExternalFailureCode``).
FAIL_STATUSES = frozenset({Status.ERR_IO, Status.ERR_IO_DATA_INTEGRITY, Status.ERR_BAD_STATE,
                           Status.ERR_NO_SPACE, Status.ERR_BUFFER_TOO_SMALL})


class UserPagerSource(RequestTracker):
    """The page source of one pager-backed VMO (Zircon's ``PagerProxy``)."""

    preserves_content = True

    def __init__(self, pager: Pager, traps_dirty: bool) -> None:
        super().__init__()
        self.pager = pager
        self.traps_dirty = traps_dirty
        self.vmo: Vmo | None = None
        self.modified_since_query = False

    def wait(self, request: Request, timeout: float | None) -> None:
        with self.lock:
            first = not request.dispatched
            request.dispatched = True
        if first:
            self.pager._dispatch(self, request)
        super().wait(request, timeout)

    def on_close(self, node: CowPages) -> None:
        super().on_close(node)
        self.pager._vmo_gone(self)


class Pager:
    """A user pager. Create with `vmo.Kernel.pager_create`."""

    def __init__(self, kernel: Kernel, handler: Callable[[PageRequest], Any] | None) -> None:
        self._kernel = kernel
        self.handler = handler
        self._lock = threading.Lock()
        self._port: collections.deque[PageRequest] = collections.deque()
        self._port_cond = threading.Condition(self._lock)
        self._sources: set[UserPagerSource] = set()
        self._closed = False
        self.handler_errors = 0

    def __repr__(self) -> str:
        mode = "handler" if self.handler is not None else "queue"
        return f"<Pager {mode} mode, {len(self._sources)} VMOs{' closed' if self._closed else ''}>"

    # ---------------------------------------------------------------- plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise ZxError(Status.ERR_BAD_HANDLE, "the pager is closed")
        if self._kernel.closed:
            raise ZxError(Status.ERR_BAD_HANDLE, "the kernel is closed")

    def _source_of(self, vmo: Any, name: str = "vmo") -> tuple[UserPagerSource, CowPages]:
        if not isinstance(vmo, Vmo):
            raise ZxError(Status.ERR_WRONG_TYPE, f"{name} must be a Vmo, not {type(vmo).__name__}")
        node = vmo.cow
        src = node.page_source
        if not isinstance(src, UserPagerSource) or src.pager is not self:
            vmo._check_open()
            raise ZxError(Status.ERR_INVALID_ARGS, f"{name} koid {vmo.koid} is not a VMO of this pager")
        self._check_served(vmo, src)
        return src, node

    def _check_served(self, vmo: Vmo, src: UserPagerSource) -> None:
        """The pager's reference to a VMO it serves is valid while the VMO's node lives.

        A user closing a pager-backed VMO closes their handle (every `Vmo` call on it is then
        ``ERR_BAD_HANDLE``), but at-least-on-write children keep the node and its page source
        open (Zircon closes the source when the root goes, after its last child). Their faults
        still reach the pager as READ requests carrying that `Vmo`, and the pager answers with
        it, as a Zircon pager answers through the handle it holds. Once the node is gone (the
        pager got COMPLETE), the reference is ``ERR_BAD_HANDLE`` for the pager too.
        """
        if self._kernel.closed:
            raise ZxError(Status.ERR_BAD_HANDLE, "the kernel is closed")
        if vmo.closed and src.closed:
            raise ZxError(Status.ERR_BAD_HANDLE, f"VMO koid {vmo.koid} is closed")

    def _range(self, vmo: Vmo, offset: Any, length: Any) -> tuple[int, int]:
        offset = _args.u64("offset", offset)
        length = _args.u64("length", length)
        _args.aligned("offset", offset)
        _args.aligned("length", length)
        _args.in_range("range", offset, length, vmo.cow.size * PAGE_SIZE)
        return offset // PAGE_SIZE, (offset + length) // PAGE_SIZE

    def _packet(self, src: UserPagerSource, command: PageRequestCommand, offset: int,
                length: int) -> PageRequest:
        assert src.vmo is not None
        return PageRequest(command, src.vmo, offset * PAGE_SIZE, length * PAGE_SIZE)

    def _dispatch(self, src: UserPagerSource, request: Request) -> None:
        packet = self._packet(src, request.command, request.offset, request.length)
        if self.handler is None:
            with self._lock:
                self._port.append(packet)
                self._port_cond.notify()
            return
        try:
            self.handler(packet)
        except Exception as e:
            self.handler_errors += 1
            src.fail(request.node, request.offset, request.length, Status.ERR_IO)
            raise ZxError(Status.ERR_IO, f"pager handler raised {type(e).__name__}: {e}") from e

    def _post_complete(self, src: UserPagerSource) -> None:
        if src.vmo is None:
            return
        packet = PageRequest(PageRequestCommand.COMPLETE, src.vmo, 0, 0)
        if self.handler is None:
            with self._lock:
                self._port.append(packet)
                self._port_cond.notify()
        else:
            try:
                self.handler(packet)
            except Exception:
                self.handler_errors += 1

    def _vmo_gone(self, src: UserPagerSource) -> None:
        """The VMO closed (called under its hierarchy lock): tell the pager, never calling
        user code under a lock — a handler hears of it from a thread of its own."""
        with self._lock:
            if src not in self._sources:
                return
            self._sources.discard(src)
        if src.detached:
            return
        if self.handler is None:
            self._post_complete(src)
        else:
            threading.Thread(target=self._post_complete, args=(src,), daemon=True,
                             name="vmo-pager-complete").start()

    # ---------------------------------------------------------------- zx_pager_* calls

    def create_vmo(self, size: int, options: PagerVmoOptions = PagerVmoOptions(0)) -> Vmo:  # noqa: B008
        """``zx_pager_create_vmo``: a VMO whose content this pager supplies."""
        self._check_open()
        opts = _args.flags("options", options, PagerVmoOptions)
        size = _args.page_size_round("size", size)
        kernel = self._kernel
        src = UserPagerSource(self, traps_dirty=bool(opts & PagerVmoOptions.TRAP_DIRTY))
        hier = kernel._new_hierarchy()
        node = CowPages(hier, size // PAGE_SIZE, page_source=src)
        node.supply_zero_offset = node.size  # every page comes from the pager at first
        hier.root = node
        vmo = Vmo(kernel, node, resizable=bool(opts & PagerVmoOptions.RESIZABLE),
                  discardable=False)
        src.vmo = vmo
        with self._lock:
            self._sources.add(src)
        return vmo

    def supply_pages(self, pager_vmo: Vmo, offset: int, length: int, aux_vmo: Vmo,
                     aux_offset: int) -> None:
        """``zx_pager_supply_pages``: move ``length`` bytes of pages from ``aux_vmo`` into
        ``pager_vmo`` at ``offset``. Pages already present in ``pager_vmo`` are kept (the
        supplied ones are dropped); ``aux_vmo`` reads zeros there afterwards."""
        self._check_open()
        src, node = self._source_of(pager_vmo, "pager_vmo")
        if not isinstance(aux_vmo, Vmo):
            raise ZxError(Status.ERR_WRONG_TYPE, f"aux_vmo must be a Vmo, not {type(aux_vmo).__name__}")
        aux_vmo._check_open()
        start, end = self._range(pager_vmo, offset, length)
        aux_offset = _args.u64("aux_offset", aux_offset)
        _args.aligned("aux_offset", aux_offset)
        _args.in_range("aux range", aux_offset, length, aux_vmo.get_size())
        if not aux_vmo.writable:
            raise ZxError(Status.ERR_ACCESS_DENIED, "aux_vmo must be writable")
        if src.detached:
            raise ZxError(Status.ERR_BAD_STATE, "pager_vmo was detached")
        if start == end:
            return
        a_start = aux_offset // PAGE_SIZE
        # Take the pages out of aux under its lock, then supply under the target's: never both
        # locks at once (two supplies in opposite directions must not deadlock). An aux VMO
        # that is a clone, a slice, pager-backed or has children is ERR_BAD_STATE, decided
        # under its lock (`CowPages.take_pages_locked`).
        with aux_vmo._hier.lock:
            aux_vmo._check_open()
            slots = aux_vmo.cow.take_pages_locked(a_start, a_start + (end - start))
        self._supply_slots(pager_vmo, src, node, start, end, slots)

    def _supply_slots(self, pager_vmo: Vmo, src: UserPagerSource, node: CowPages, start: int,
                      end: int, slots: list[int]) -> None:
        """Place ``slots`` (frames in flight, or MARKERs) at ``[start, end)`` under the
        target's lock. Whatever is not placed, for whatever reason, is freed."""
        pmm = self._kernel.pmm
        try:
            with pager_vmo._hier.lock:
                self._check_served(pager_vmo, src)
                if src.detached:
                    raise ZxError(Status.ERR_BAD_STATE, "pager_vmo was detached")
                if node.size < end:
                    raise ZxError(Status.ERR_OUT_OF_RANGE, "pager_vmo shrank during the supply")
                rejected = node.supply_pages_locked(start, slots)
                slots = []
                pmm.free(rejected)
        finally:
            pmm.free([f for f in slots if f > 0])

    def supply_pages_from_fd(self, pager_vmo: Vmo, offset: int, length: int, fd: int,
                             fd_offset: int) -> int:
        """Supply ``[offset, offset + length)`` of ``pager_vmo`` with the bytes of the file
        ``fd`` at ``fd_offset``; returns the bytes read from the file. Not a Zircon call.

        The outcome is that of filling an aux VMO from the file and `supply_pages` from it,
        without the aux VMO: fresh frames are allocated, the file is read into them
        (``preadv``, no intermediate copy, no lock held while it reads) and they are
        supplied. Bytes past the end of the file are zeros; pages wholly past it are supplied
        as zero pages without memory. Pages already present in ``pager_vmo`` are kept, as with
        `supply_pages`, and their part of the file is not read at all.

        Raises ``ZxError``: ``ERR_INVALID_ARGS`` for an fd that is not an int in range or an
        unaligned offset/length, ``ERR_BAD_HANDLE`` for an fd that is not open,
        ``ERR_OUT_OF_RANGE`` past the VMO's end, ``ERR_NO_MEMORY`` if the arena cannot hold the
        range, ``ERR_ACCESS_DENIED`` for an fd not open for reading, ``ERR_IO`` if the read
        fails (the run being read is not supplied), ``ERR_BAD_STATE`` once the VMO was
        detached.
        """
        self._check_open()
        src, node = self._source_of(pager_vmo, "pager_vmo")
        fd = _args.fd("fd", fd, read=True)
        fd_offset = _args.u64("fd_offset", fd_offset)
        start, end = self._range(pager_vmo, offset, length)
        if end - start > MAX_SUPPLY_PAGES:
            raise ZxError(Status.ERR_NO_MEMORY,
                          f"a supply of {end - start} pages is more than the page lists can "
                          f"track at once ({MAX_SUPPLY_PAGES} pages)")
        with pager_vmo._hier.lock:
            self._check_served(pager_vmo, src)
            if src.detached:
                raise ZxError(Status.ERR_BAD_STATE, "pager_vmo was detached")
            runs = _absent_runs(node, start, end)
        got = 0
        for run_start, run_end in runs:
            got += self._supply_run_from_fd(pager_vmo, src, node, run_start, run_end, fd,
                                            fd_offset + (run_start - start) * PAGE_SIZE)
        return got

    def _supply_run_from_fd(self, pager_vmo: Vmo, src: UserPagerSource, node: CowPages,
                            start: int, end: int, fd: int, fd_offset: int) -> int:
        count = end - start
        pmm = self._kernel.pmm
        frames = pmm.alloc(count, zero=False)
        try:
            got = fill_frames_from_fd(pmm, frames, fd, fd_offset)
        except BaseException:
            pmm.free(frames)
            raise
        full = -(-got // PAGE_SIZE)
        slots = frames
        if full < count:
            # Pages wholly past the end of the file: zero pages, no memory.
            pmm.free(frames[full:])
            slots = frames[:full] + [MARKER] * (count - full)
        self._supply_slots(pager_vmo, src, node, start, end, slots)
        return got

    def op_range(self, op: PagerOp, vmo: Vmo, offset: int, length: int, data: int = 0) -> None:
        """``zx_pager_op_range``: FAIL, DIRTY, WRITEBACK_BEGIN, WRITEBACK_END."""
        self._check_open()
        op = _args.enum_value("op", op, PagerOp)
        src, node = self._source_of(vmo)
        if isinstance(data, bool) or not isinstance(data, int):
            raise ZxError(Status.ERR_INVALID_ARGS, f"data must be an int, not {type(data).__name__}")
        with vmo._hier.lock:
            self._check_served(vmo, src)
            start, end = self._range(vmo, offset, length)
            if op == PagerOp.FAIL:
                try:
                    status = Status(data)
                except ValueError:
                    status = None
                if status not in FAIL_STATUSES:
                    raise ZxError(Status.ERR_INVALID_ARGS,
                                  f"FAIL status {data} is not one of "
                                  f"{sorted(s.name for s in FAIL_STATUSES)}")
                assert status is not None
                src.fail(node, start, end - start, status)
                return
            if src.detached:
                raise ZxError(Status.ERR_BAD_STATE, "the VMO was detached from its pager")
            if op == PagerOp.DIRTY:
                node.dirty_pages_locked(start, end)
            elif op == PagerOp.WRITEBACK_BEGIN:
                if data & ~WRITEBACK_BEGIN_ZERO_RANGE:
                    raise ZxError(Status.ERR_INVALID_ARGS,
                                  f"WRITEBACK_BEGIN data {data:#x} has unknown bits")
                node.writeback_begin_locked(start, end)
                if (tracer := node.hier.kernel.tracer) is not None:
                    trace.writeback(tracer, node, start, end - start, "begin")
            else:
                if data:
                    raise ZxError(Status.ERR_INVALID_ARGS, "WRITEBACK_END takes no data")
                node.writeback_end_locked(start, end)
                if (tracer := node.hier.kernel.tracer) is not None:
                    trace.writeback(tracer, node, start, end - start, "end")

    def query_dirty_ranges(self, vmo: Vmo, offset: int, length: int) -> list[DirtyRange]:
        """``zx_pager_query_dirty_ranges``: the runs not yet written back, in bytes."""
        self._check_open()
        src, node = self._source_of(vmo)
        with vmo._hier.lock:
            self._check_served(vmo, src)
            start, end = self._range(vmo, offset, length)
            return [DirtyRange(o * PAGE_SIZE, n * PAGE_SIZE,
                               DirtyRangeOptions.IS_ZERO if z else DirtyRangeOptions(0))
                    for o, n, z in node.dirty_ranges_locked(start, end)]

    def query_vmo_stats(self, vmo: Vmo, reset: bool = False) -> PagerVmoStats:
        """``zx_pager_query_vmo_stats``: was the VMO modified (since the last reset)?"""
        self._check_open()
        if not isinstance(reset, bool):
            raise ZxError(Status.ERR_INVALID_ARGS, "reset must be a bool")
        src, node = self._source_of(vmo)
        with vmo._hier.lock:
            self._check_served(vmo, src)
            stats = PagerVmoStats(modified=node.modified)
            if reset:
                node.modified = False
            return stats

    def detach_vmo(self, vmo: Vmo) -> None:
        """``zx_pager_detach_vmo``: outstanding and later requests fail with ERR_BAD_STATE and
        the pager gets a COMPLETE request."""
        self._check_open()
        src, node = self._source_of(vmo)
        with vmo._hier.lock:
            self._check_served(vmo, src)
            if src.detached:
                return
            src.detached = True
            node.detach_source_locked()
            src.cancel_all(node, Status.ERR_BAD_STATE)
        self._post_complete(src)

    def get_request(self, timeout: float | None = None) -> PageRequest:
        """Take the next request from the port (queue mode); ``ERR_TIMED_OUT`` if none comes
        within ``timeout`` seconds."""
        self._check_open()
        timeout = _args.timeout("timeout", timeout)
        if self.handler is not None:
            raise ZxError(Status.ERR_BAD_STATE, "this pager delivers requests to its handler")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._port:
                if self._closed:
                    raise ZxError(Status.ERR_BAD_HANDLE, "the pager was closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ZxError(Status.ERR_TIMED_OUT, f"no page request within {timeout} s")
                self._port_cond.wait(remaining)
            return self._port.popleft()

    def close(self) -> None:
        """Close the pager: its VMOs are detached (their requests fail). Idempotent: a second
        close does nothing; the kernel's close closes every pager of the kernel."""
        if self._closed:
            return
        for src in list(self._sources):
            vmo = src.vmo
            if vmo is not None and not src.closed:
                with contextlib.suppress(ZxError):
                    self.detach_vmo(vmo)
        with self._lock:
            self._closed = True
            self._port_cond.notify_all()

    def __enter__(self) -> Pager:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self.close()


def _absent_runs(node: CowPages, start: int, end: int) -> list[tuple[int, int]]:
    """The runs of ``[start, end)`` a supply would fill: slots holding nothing, below the
    supply-zero offset (past it the VMO keeps its zeros)."""
    end = min(end, node.supply_zero_offset)
    if end <= start:
        return []
    if node.page_list.is_empty_range(start, end):
        return [(start, end)]
    dense = node.page_list.dense(start, end)
    if dense.count(EMPTY) == len(dense):
        return [(start, end)]
    runs = []
    run_start = None
    for i, v in enumerate(dense):
        if v == EMPTY and run_start is None:
            run_start = start + i
        elif v != EMPTY and run_start is not None:
            runs.append((run_start, start + i))
            run_start = None
    if run_start is not None:
        runs.append((run_start, end))
    return runs


# The kernel creates pagers through this (it sits below the page sources; see PagerFactory).
install_pager_factory(Pager)
