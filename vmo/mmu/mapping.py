"""Mappings: VMO pages in real memory, served by userfaultfd and kept coherent with the VMO.

`Vmo.map` returns a `Mapping`: a range of real addresses whose loads and stores take page
faults that this kernel serves. The data structure, before any code:

*Windows.* Each mapping owns a window (`vmo.mmu.fault_handler.Window`): a ``MAP_SHARED``
memfd ``W`` the size of the mapping, mapped once where the faulting code runs (the mapping's
``address``, registered with a userfaultfd for missing and write-protect faults) and once more,
unregistered, here (the *alias*). A window page is in one of four states:

- ``ABSENT``: not in ``W``; the next access is a missing fault.
- ``READ_ONLY`` copy of frame ``f``: installed write-protected with the bytes of ``f`` (zeros
  for the zero frame). The frame is authoritative; the copy equals it. A store faults.
- ``WRITABLE`` (checked out) for frame ``f``: installed writable after a write fault made ``f``
  exclusive to the VMO (`CowPages.lookup_for_write_locked`: copy-on-write, commit, dirty
  tracking). The *window* page is authoritative and ``f`` is stale until it is recalled.
- ``POISONED``: a fault that failed (a pager error, a discarded VMO, an offset past the end);
  accesses get SIGBUS, which the accessors report as `ZxError`, until the faulting side clears
  it.

*The reverse map.* `MappingManager` (one per kernel) is the `vmo.pmm.Coherence` of the arena:
``readers[f]`` is the set of window pages holding read-only copies of frame ``f``, and
``writer[f]`` the one window page that has ``f`` checked out (then ``f`` has no readers). A window
page is named by a *key*, ``mapping id << 32 | page``. The zero frame is never tracked: it never
changes, and what a VMO shows in place of zeros changes only through a range change (below).

*Coherence.* The kernel touches frame bytes only through `vmo.pmm`, which calls the manager:

- ``before_read(frames)``: a checked-out frame is *recalled*: write-protect the window page
  first (from then on a store waits for the handler, which needs the hierarchy lock the caller
  holds), then copy the window page into the frame. The page becomes a read-only copy.
- ``before_write(frames)``: recall, then drop every copy (punch the window page: the next
  access faults and reads the new bytes).
- ``on_free(frames)``: drop every copy.

What a VMO *shows* at an offset changes without touching the old frame's bytes when a page is
forked, committed, decommitted, zeroed, supplied, evicted, discarded or cut off by a resize; the
hierarchy then calls `MappingManager.on_range_change` for every visible node that sees the
range (the seed's ``RangeChangeUpdate``): ``UNMAP`` recalls and drops the window pages of the
mappings of that node; ``REMOVE_WRITE`` (a snapshot, a writeback) recalls checked-out pages so
the next store faults again. ``docs/coherence.md`` walks through every case.

*Locks.* Window states and the reverse map are guarded by the manager's lock (an ``RLock``).
Its holder never waits for anything but ioctls and memory copies of pages that are present, and
it is always taken *after* a hierarchy lock, never before one. The fault handler thread takes
the hierarchy lock of the faulting mapping's VMO, then the manager lock. No thread that holds
either ever waits for a fault: in-process accessors copy with the GIL released and no lock.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

import vmo._args as _args
import vmo.trace as trace
from vmo.cow_pages import CowPages, DiscardableState, NeedPages, RangeChangeOp
from vmo.errors import Status, ZxError
from vmo.pmm import PAGE_SIZE, ZERO_FRAME
from vmo.types import Perms
from vmo.vm_object import install_mmu

if TYPE_CHECKING:
    from vmo.kernel import Kernel
    from vmo.mmu.fault_handler import FaultHandler, Window
    from vmo.vm_object import Vmo

#: Seconds a workload's ``madvise`` range is watched for the hole punch of ``MADV_REMOVE``
#: (see `MappingManager._range_removed`); faults in the range wait that long at most.
REMOVE_SETTLE = 0.2

#: Pages a fault installs by default (the faulting page and its already-present neighbours in
#: the aligned block of this many pages). 1 turns fault-around off.
DEFAULT_FAULT_AROUND = 16
MAX_FAULT_AROUND = 256

# Window page states (see the module docstring); the same values as vmo.mmu.fault_handler.
ABSENT, READ_ONLY, WRITABLE, POISONED = 0, 1, 2, 3

_PAGE_MASK = (1 << 32) - 1
_PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
_UNMAP = RangeChangeOp.UNMAP
_DISCARDED = DiscardableState.DISCARDED
_READ_ONLY_RUN = bytes([READ_ONLY]) * MAX_FAULT_AROUND
_ABSENT_RUN = bytes([ABSENT]) * MAX_FAULT_AROUND
_ZERO_FRAMES = array("q", bytes(8 * MAX_FAULT_AROUND))
_now_ns = time.perf_counter_ns
_ids = itertools.count(1)
_managers_lock = threading.Lock()
_managers: weakref.WeakKeyDictionary[Kernel, MappingManager] = weakref.WeakKeyDictionary()


@attrs.define(frozen=True)
class FaultStats:
    """What the fault handler did for one mapping (`Mapping.fault_stats`)."""

    #: Faults taken, by kind: loads of absent pages, stores to absent pages, stores to
    #: read-only copies (write-protect faults).
    read_faults: int
    write_faults: int
    wp_faults: int
    #: Pages placed in the window (read-only or writable), the faulting ones included.
    pages_installed: int
    #: Of those, neighbours installed by fault-around.
    pages_faulted_around: int
    #: Pages checked out for writing (a write fault, or write fault-around).
    pages_checked_out: int
    #: Checked-out pages whose bytes the kernel recalled into their frame.
    recalls: int
    #: Window pages dropped because the VMO changed under them.
    pages_dropped: int
    #: Faults that had to wait for a page source.
    page_requests: int
    #: Faults that failed (the access got an error).
    failures: int
    #: Faults found already resolved when read (a racing thread, fault-around).
    stale_faults: int
    #: Seconds the handler spent serving this mapping's faults.
    time_spent: float

    @property
    def faults(self) -> int:
        return self.read_faults + self.write_faults + self.wp_faults


class Mapping:
    """VMO pages placed in real memory (``zx_vmar_map``). Create with `Vmo.map`.

    ``address``/``length``/``perms``: where it is. `read`/`write` copy to and from the mapped
    addresses with the GIL released (the kernel's fault handler is a thread of this process).
    A mapping made for a workload process (`vmo.mmu.workload`) has ``remote`` set: its
    ``address`` is in that process, and the accessors here raise ``ERR_NOT_SUPPORTED``.
    """

    def __init__(self, manager: MappingManager, vmo: Vmo, offset: int, length: int,
                 perms: Perms, fault_around: int, window: Window, *, remote: bool) -> None:
        self._mgr = manager
        self.vmo = vmo
        self.offset = offset
        self._length = length
        self._perms = perms
        self._writable = bool(perms & Perms.WRITE)  # an int test on the hot path, not IntFlag
        self.fault_around = fault_around
        self.remote = remote
        self._win = window
        self._hier_lock = vmo._hier.lock
        self._id = next(_ids)
        self._key_base = self._id << 32
        self._vpage = offset // PAGE_SIZE
        self._npages = length // PAGE_SIZE
        self._dead = False
        self._users = 0
        self._users_cond = threading.Condition()
        self._failures: dict[int, Status] = {}
        # Counters (see FaultStats); written under the manager lock or by the handler thread.
        self._read_faults = self._write_faults = self._wp_faults = 0
        self._installed = self._around = self._checked_out = 0
        self._recalls = self._dropped = self._requests = self._failed = self._stale = 0
        self._time_ns = 0
        # The page a write fault is checking out, and whether a range change left it in place
        # (see `MappingManager._write_fault_locked`); guarded by the hierarchy lock.
        self._keep = -1
        self._kept = False
        # Discards of ranges the workload removed, pending: (first page, end page, done).
        # Faults there wait for them (`MappingManager._range_removed`); hierarchy lock.
        self._removals: list[tuple[int, int, threading.Event]] = []
        self._removal_errors = 0
        # Called once, after the teardown, by whoever must hear of it (a workload tells its
        # process to release the mapping there); never under a lock.
        self._on_unmap: Callable[[Mapping], None] | None = None

    def __repr__(self) -> str:
        state = "unmapped" if self._dead else f"at {self._win.address:#x}"
        where = " remote" if self.remote else ""
        return (f"<Mapping{where} koid={self.vmo.koid} [{self.offset:#x}, +{self._length:#x}) "
                f"{self._perms!r} {state}>")

    # ---------------------------------------------------------------- where it is

    @property
    def address(self) -> int:
        """The first mapped address (in the workload's process for a remote mapping)."""
        return self._win.address

    @property
    def length(self) -> int:
        return self._length

    @property
    def perms(self) -> Perms:
        return self._perms

    @property
    def unmapped(self) -> bool:
        return self._dead

    # ---------------------------------------------------------------- accessors

    def _check_access(self, what: str, offset: int, length: int, perm: Perms) -> None:
        if self._dead:
            raise ZxError(Status.ERR_BAD_STATE, f"{what} through an unmapped mapping")
        if self.remote:
            raise ZxError(Status.ERR_NOT_SUPPORTED,
                          f"{what}: this mapping lives in a workload process; touch it there")
        if not self._perms & perm:
            raise ZxError(Status.ERR_ACCESS_DENIED,
                          f"{what} through a mapping without {perm.name} permission")
        _args.in_range(what, offset, length, self._length)

    def _enter(self) -> None:
        with self._users_cond:
            if self._dead:
                raise ZxError(Status.ERR_BAD_STATE, "the mapping was unmapped")
            self._users += 1

    def _leave(self) -> None:
        with self._users_cond:
            self._users -= 1
            if self._users == 0:
                self._users_cond.notify_all()

    def read(self, length: int, offset: int = 0) -> bytes:
        """Load ``length`` bytes at ``offset`` into the mapping: exactly what ``vmo.read`` of
        the same VMO range returns. Faults failing (a pager error, a discarded VMO, a VMO
        shrunk under the mapping) raise `ZxError` with the failure's status."""
        length = _args.u64("length", length)
        offset = _args.u64("offset", offset)
        self._check_access("read", offset, length, Perms.READ)
        if length == 0:
            return b""
        import vmo.mmu.uffd as uffd

        self._enter()
        try:
            data = uffd.copy_from_address_checked(self._win.address + offset, length)
        except uffd.MemoryFault as e:
            raise self._fault_error("read", e.address, e.signo) from None
        finally:
            self._leave()
        if self._dead:
            raise ZxError(Status.ERR_BAD_STATE, "the mapping was unmapped during the read")
        return data

    def write(self, data: Any, offset: int = 0) -> None:
        """Store the bytes-like ``data`` at ``offset`` into the mapping; ``vmo.read`` and every
        other mapping of the VMO see it. Errors as `read`; a store through a mapping without
        ``WRITE`` is ``ERR_ACCESS_DENIED``. A failure part-way may leave part of ``data`` stored
        (bytes before the page that failed, in the copy's order, which is not always a
        prefix: ``memcpy`` may store the head last)."""
        view = _args.data_view("data", data)
        offset = _args.u64("offset", offset)
        self._check_access("write", offset, len(view), Perms.WRITE)
        if len(view) == 0:
            return
        import vmo.mmu.uffd as uffd

        self._enter()
        try:
            uffd.copy_to_address_checked(self._win.address + offset, view)
        except uffd.MemoryFault as e:
            raise self._fault_error("write", e.address, e.signo) from None
        finally:
            self._leave()
        if self._dead:
            raise ZxError(Status.ERR_BAD_STATE, "the mapping was unmapped during the write")

    def _fault_error(self, what: str, address: int, signo: int) -> ZxError:
        page = (address - self._win.address) // PAGE_SIZE
        where = f"{what} at mapping offset {page * PAGE_SIZE:#x}"
        if self._dead:
            return ZxError(Status.ERR_BAD_STATE, f"{where}: the mapping was unmapped")
        if signo == signal.SIGSEGV:
            return ZxError(Status.ERR_ACCESS_DENIED, f"{where}: the mapping does not allow it")
        status = self._mgr._consume_failure(self, page)
        return ZxError(status, f"{where}: the page fault failed")

    # ---------------------------------------------------------------- protect / unmap

    def protect(self, perms: Perms) -> None:
        """Change the permissions (``zx_vmar_protect``). ``WRITE`` needs ``READ`` and a
        writable VMO (else ``ERR_INVALID_ARGS`` / ``ERR_ACCESS_DENIED``)."""
        perms = _args.flags("perms", perms, Perms)
        if self._dead:
            raise ZxError(Status.ERR_BAD_STATE, "protect of an unmapped mapping")
        if self.remote:
            raise ZxError(Status.ERR_NOT_SUPPORTED,
                          "the permissions of a workload's mapping are fixed when it is mapped")
        _check_perms(perms, self.vmo)
        self._mgr._protect(self, perms)

    def unmap(self) -> None:
        """Unmap (``zx_vmar_unmap``): stores made so far are in the VMO; any later access, and
        any access waiting on a fault now, fails with ``ERR_BAD_STATE``. Idempotent: unmapping
        an unmapped mapping (by `unmap`, its VMO's close or the kernel's) does nothing."""
        self._teardown()

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._dead:
            self._teardown()

    def fault_stats(self) -> FaultStats:
        """Faults by kind, pages installed, time spent (see `FaultStats`)."""
        return FaultStats(
            read_faults=self._read_faults, write_faults=self._write_faults,
            wp_faults=self._wp_faults, pages_installed=self._installed,
            pages_faulted_around=self._around, pages_checked_out=self._checked_out,
            recalls=self._recalls, pages_dropped=self._dropped, page_requests=self._requests,
            failures=self._failed, stale_faults=self._stale, time_spent=self._time_ns / 1e9)

    # ---------------------------------------------------------------- kernel side

    def _teardown(self) -> None:
        """Unmap (idempotent); called by `unmap`, `Vmo.close`, kernel close, and when a
        workload process exits."""
        self._mgr._teardown(self)

    def _on_vmo_resized(self) -> None:
        """`Vmo.set_size` calls this under the hierarchy lock. Pages past the new end were
        already dropped by the range change; faults there fail with ``ERR_OUT_OF_RANGE``
        until the VMO grows again."""

    # FaultSink (called on the handler thread)

    def on_fault(self, address: int, write: int, wp: int) -> None:
        """One fault (on the handler thread): ``write`` for any store, ``wp`` for a store to
        a read-only copy. The hot path: counters first (the fault's resolution wakes the
        faulting thread, which may look at them at once), then `MappingManager._resolve`."""
        t0 = _now_ns()
        page = (address - self._win.address) >> _PAGE_SHIFT
        if not 0 <= page < self._npages:
            return
        if wp:
            self._wp_faults += 1
            write = 1
        elif write:
            self._write_faults += 1
        else:
            self._read_faults += 1
        mgr = self._mgr
        wait = mgr._resolve(self, page, write)
        if wait is not None:
            mgr._defer(self, page, bool(write), wait)
        self._time_ns += (spent := _now_ns() - t0)
        if (tracer := self.vmo._kernel.state.tracer) is not None:
            trace.faulted(tracer, self, page, write, wp, wait is None, spent)

    def on_uffd_error(self, err: int) -> None:
        # The userfaultfd became unreadable (the workload's process is gone): drop the mapping.
        self._teardown()

    def on_watchdog_failure(self, address: int) -> None:
        """The deadlock watchdog failed a fault of this (local) mapping: record it as a failed
        fault (``ERR_BAD_STATE``), so that the accessor's report and the poison's clearing
        work as for any other failure."""
        page = (address - self._win.address) >> _PAGE_SHIFT
        if not 0 <= page < self._npages:
            return
        mgr = self._mgr
        with self._hier_lock, mgr.lock:
            self._failed += 1
            self._failures[page] = Status.ERR_BAD_STATE
            if not self._dead and self._win.state[page] == ABSENT:
                self._win.state[page] = POISONED

    def on_range_removed(self, start: int, end: int, unmapped: bool) -> None:
        """The workload took ``[start, end)`` of this mapping away (on the handler thread):
        see `MappingManager._range_removed`."""
        base = self._win.address
        p0 = max(0, (start - base) >> _PAGE_SHIFT)
        p1 = min(self._npages, (end - base + PAGE_SIZE - 1) >> _PAGE_SHIFT)
        if p0 < p1:
            self._mgr._range_removed(self, p0, p1, unmapped)


def _check_perms(perms: Perms, vmo: Vmo) -> None:
    if perms & Perms.WRITE and not perms & Perms.READ:
        raise ZxError(Status.ERR_INVALID_ARGS, "WRITE permission needs READ")
    if perms & Perms.WRITE and not vmo.writable:
        raise ZxError(Status.ERR_ACCESS_DENIED, "WRITE mapping of a VMO without write rights")


def _prot(perms: Perms) -> int:
    import vmo.mmu.uffd as uffd

    prot = uffd.PROT_NONE
    if perms & Perms.READ:
        prot |= uffd.PROT_READ
    if perms & Perms.WRITE:
        prot |= uffd.PROT_WRITE
    return prot


class MappingManager:
    """The mappings of one kernel: the reverse map, the `Coherence` hooks of its arena, the
    range-change listener of its hierarchies, and the fault handler thread (see the module
    docstring)."""

    def __init__(self, kernel: Kernel) -> None:
        import vmo.mmu.uffd as uffd
        from vmo.mmu.fault_handler import FaultHandler

        self._kernel_ref = weakref.ref(kernel)
        self.page_request_timeout = kernel.page_request_timeout
        self.pmm = kernel.pmm
        self.lock = threading.RLock()
        self.readers: dict[int, set[int]] = {}
        self.writer: dict[int, int] = {}
        self.mappings: dict[int, Mapping] = {}  # by id
        self.fault_around = DEFAULT_FAULT_AROUND
        self.closed = False
        self._pending: set[tuple[int, bool]] = set()
        self._physmap_addr = uffd.buffer_address(self.pmm.physmap)
        # UFFDIO_WRITEPROTECT with integer arguments (0 or -errno), for the write-fault path.
        self._uffd_wp = uffd.lib.vmo_uffd_writeprotect
        self._zeros = bytes(MAX_FAULT_AROUND * PAGE_SIZE)
        self._zeros_addr = uffd.buffer_address(self._zeros)
        self.handler: FaultHandler = FaultHandler(f"vmo-faults-{id(kernel):x}")
        kernel.state.range_change_listeners.append(self.on_range_change)
        self.pmm.coherence = self

    def __repr__(self) -> str:
        return (f"<MappingManager {len(self.mappings)} mappings, {len(self.writer)} checked "
                f"out, {len(self.readers)} frames copied>")

    # ---------------------------------------------------------------- creating mappings

    def map_local(self, vmo: Vmo, offset: int, length: int, perms: Perms,
                  fault_around: int) -> Mapping:
        from vmo.mmu.fault_handler import Window, watch_for_deadlock

        try:
            win = Window(length, f"vmo-{vmo.koid}-window")
        except OSError as e:
            raise ZxError(Status.ERR_NO_RESOURCES, f"cannot create a window memfd: {e}") from e
        try:
            win.map_here(_prot(perms))
            win.register_here()
        except OSError as e:
            win.unmap_here()
            win.close()
            raise ZxError(Status.ERR_NO_RESOURCES, f"cannot map the window: {e}") from e
        m = Mapping(self, vmo, offset, length, perms, fault_around, win, remote=False)
        try:
            # Faults of this process can deadlock on the GIL: see `watch_for_deadlock`.
            watch_for_deadlock(win.uffd_fd)
        except OSError as e:
            self._discard_window(m)
            raise ZxError(Status.ERR_NO_RESOURCES, str(e)) from e
        try:
            self.activate(m)
        except BaseException:
            self._discard_window(m)
            raise
        return m

    def new_remote(self, vmo: Vmo, offset: int, length: int, perms: Perms,
                   fault_around: int) -> Mapping:
        """A mapping whose faulting side another process will create (`vmo.mmu.workload`):
        attach its address and userfaultfd with ``m._win.attach``, then `activate` it."""
        from vmo.mmu.fault_handler import Window

        try:
            win = Window(length, f"vmo-{vmo.koid}-window")
        except OSError as e:
            raise ZxError(Status.ERR_NO_RESOURCES, f"cannot create a window memfd: {e}") from e
        return Mapping(self, vmo, offset, length, perms, fault_around, win, remote=True)

    def activate(self, m: Mapping) -> None:
        """Register ``m`` with its VMO and start serving its faults."""
        vmo = m.vmo
        with vmo._hier.lock:
            vmo._check_open()
            if self.closed:
                raise ZxError(Status.ERR_BAD_HANDLE, "the kernel is closed")
            size = vmo.cow.size * PAGE_SIZE
            if m.offset + m.length > size:
                raise ZxError(Status.ERR_OUT_OF_RANGE,
                              f"map [{m.offset:#x}, +{m.length:#x}) is past the end {size:#x}")
            with self.lock:
                self.mappings[m._id] = m
            vmo.mappings.append(m)
        self.handler.add(m._win.uffd_fd, m)

    def _discard_window(self, m: Mapping) -> None:
        """Free the window of a mapping that never became active."""
        import os

        from vmo.mmu._uffd_cffi import lib

        win = m._win
        if win.uffd_fd >= 0:
            lib.vmo_wd_remove(win.uffd_fd)
            os.close(win.uffd_fd)
            win.uffd_fd = -1
        win.unmap_here()
        win.close()

    # ---------------------------------------------------------------- serving faults

    def _resolve(self, m: Mapping, page: int, write: int) -> tuple[Any, Any] | None:
        """Resolve one fault under the hierarchy lock. Returns ``(source, request)`` when a
        page source must act first (the request is registered; wait for it, then retry)."""
        with m._hier_lock:
            if m._dead:
                self._dead_fault_locked(m, page)
                return None
            if m.vmo._closed:
                # Mapped while the VMO was being closed: unmap it now.
                self._teardown(m)
                return None
            if m._removals:
                done = self._removal_of(m, page)
                if done is not None:
                    return None, done  # wait for the discard of a removed range first
            if m.remote:
                s = m._win.state[page]
                if s == WRITABLE or (s == READ_ONLY and not write):
                    # A missing fault (a store to a read-only copy is a write-protect fault)
                    # at a page the window believes present: stale, or removed under us.
                    self._removed_under_us(m, page)
            try:
                if write:
                    self._write_fault_locked(m, page)
                else:
                    self._read_fault_locked(m, page)
            except NeedPages as need:
                source = need.node.page_source
                if source is None:
                    self._fail_locked(m, page, Status.ERR_INTERNAL)
                    return None
                try:
                    request = source.register_locked(need)
                except ZxError as e:
                    self._fail_locked(m, page, e.status)
                    return None
                m._requests += 1
                return source, request
            except ZxError as e:
                self._fail_locked(m, page, e.status)
            except OSError as e:
                if e.errno == errno.ESRCH:
                    # The workload process that registered the window has exited: drop the
                    # mapping (its checked-out pages are recalled from the window first).
                    self._teardown(m)
                else:
                    self._internal_error(m, page)
            except Exception:
                self._internal_error(m, page)
        return None

    def _range_removed(self, m: Mapping, p0: int, p1: int, unmapped: bool) -> None:
        """The workload took window pages ``[p0, p1)`` away (crosvm's ``handle_page_remove``).

        ``munmap`` (``unmapped``): the range leaves the window at once -- checked-out pages
        are recalled (the window memfd still holds their bytes) and every copy is dropped; the
        VMO keeps its content.

        ``madvise``: the event is the same for ``MADV_REMOVE`` and ``MADV_DONTNEED``, and is
        read before the kernel acts, so a worker watches the window memfd for up to
        `REMOVE_SETTLE` seconds (faults in the range wait for it, `_removal_of`): a page the
        window held that becomes a hole means ``MADV_REMOVE``, which *discards* the range --
        the window's pages there are dropped (their bytes are gone) and the VMO's whole pages
        there are decommitted (`VmoOp.DECOMMIT`; `VmoOp.ZERO` where DECOMMIT is not
        supported, e.g. pager-backed VMOs), so the range reads as a fresh one. Otherwise it
        was ``MADV_DONTNEED`` (the window memfd keeps the pages, as shared memory does), or a
        range the window held nothing of: nothing changes. A read-only mapping discards
        nothing."""
        with m._hier_lock:
            if m._dead:
                return
            if unmapped:
                with self.lock:
                    self._change_pages(m, p0, p1, True)
                return
            state = m._win.state
            present = [p for p in range(p0, p1) if state[p] in (READ_ONLY, WRITABLE)]
            done = threading.Event()
            m._removals.append((p0, p1, done))
        vmo = m.vmo
        offset = (m._vpage + p0) * PAGE_SIZE
        length = (p1 - p0) * PAGE_SIZE

        def settle() -> None:
            from vmo.types import VmoOp

            try:
                if not self._punched(m, present):
                    return  # MADV_DONTNEED, or nothing of the range in the window
                with m._hier_lock:
                    if m._dead:
                        return
                    with self.lock:
                        self._drop_pages(m, list(range(p0, p1)))
                if not m._writable:
                    return
                try:
                    try:
                        vmo.op_range(VmoOp.DECOMMIT, offset, length)
                    except ZxError as e:
                        if e.status != Status.ERR_NOT_SUPPORTED:
                            raise
                        vmo.op_range(VmoOp.ZERO, offset, length)
                except ZxError as e:
                    # The VMO closed, shrank or its pager failed: nothing more to discard.
                    m._removal_errors += 1
                    self.handler.errors.append(f"{m!r}: discarding a removed range: {e}")
            finally:
                with m._hier_lock:
                    m._removals = [r for r in m._removals if r[2] is not done]
                done.set()

        self.handler.defer(settle, name=f"vmo-remove-{vmo.koid}")

    def _punched(self, m: Mapping, pages: list[int]) -> bool:
        """Does one of ``pages`` become a hole of the window memfd within `REMOVE_SETTLE`?"""
        import vmo.mmu.uffd as uffd

        if not pages:
            return False
        fd = m._win.fd
        deadline = time.monotonic() + REMOVE_SETTLE
        while True:
            for p in pages:
                try:
                    if uffd.lseek_data(fd, p * PAGE_SIZE) != p * PAGE_SIZE:
                        return True
                except OSError:
                    return False  # the window is gone
            if time.monotonic() > deadline or m._dead:
                return False
            time.sleep(0.0005)

    def _removal_of(self, m: Mapping, page: int) -> threading.Event | None:
        """The pending discard covering ``page``, if any (hierarchy lock held)."""
        for p0, p1, done in m._removals:
            if p0 <= page < p1:
                return done
        return None

    def _removed_under_us(self, m: Mapping, page: int) -> bool:
        """A missing fault at a page the window believes present: was the page taken out of
        the window memfd behind the handler's back (``MADV_REMOVE`` racing with a refill)?
        Then drop it (its bytes are gone, as the removal meant) so the fault can be served."""
        import vmo.mmu.uffd as uffd

        win = m._win
        try:
            data = uffd.lseek_data(win.fd, page * PAGE_SIZE)
        except OSError:
            return False
        if data == page * PAGE_SIZE:
            return False
        with self.lock:
            self._drop_pages(m, [page])
        return True

    def _internal_error(self, m: Mapping, page: int) -> None:
        """A bug: the faulting thread gets ``ERR_INTERNAL`` rather than a hang; the handler
        records the traceback (``handler.errors``) and keeps serving."""
        import traceback

        self.handler.errors.append(traceback.format_exc())
        try:
            self._fail_locked(m, page, Status.ERR_INTERNAL)
        except Exception:  # noqa: BLE001 - last resort: let the access retry
            self.handler.errors.append(traceback.format_exc())
            with contextlib.suppress(OSError):
                m._win.wake(page)

    def _defer(self, m: Mapping, page: int, write: bool,
               wait: tuple[Any, Any]) -> None:
        key = (m._key_base | page, write)
        if key in self._pending:
            return  # a worker already waits for this page; its retry wakes every waiter
        self._pending.add(key)

        def work() -> None:
            source, request = wait
            try:
                while True:
                    try:
                        if source is None:  # a discard of a removed range (`_range_removed`)
                            if not request.wait(self.page_request_timeout):
                                raise ZxError(Status.ERR_TIMED_OUT,
                                              "the discard of a removed range did not end")
                        else:
                            source.wait(request, self.page_request_timeout)
                    except ZxError as e:
                        with m.vmo._hier.lock:
                            if m._dead:
                                self._dead_fault_locked(m, page)
                            else:
                                self._fail_locked(m, page, e.status)
                        return
                    again = self._resolve(m, page, write)
                    if again is None:
                        return
                    source, request = again
            finally:
                self._pending.discard(key)

        self.handler.defer(work, name=f"vmo-fault-wait-{m.vmo.koid}")

    def _fault_window(self, m: Mapping, page: int, node: CowPages) -> tuple[int, int]:
        """The pages a fault at ``page`` may install: the aligned block of ``fault_around``
        VMO pages that contains it, clipped to the mapping and to the VMO."""
        n = m.fault_around
        limit = min(m._npages, node.size - m._vpage)
        if n <= 1:
            return page, page + 1
        ws = max(0, page - (m._vpage + page) % n)
        return ws, min(ws + n, limit)

    def _read_fault_locked(self, m: Mapping, page: int) -> None:
        win = m._win
        state = win.state[page]
        if state != ABSENT:
            # Resolved meanwhile (fault-around, a racing thread), or failed: a poisoned page
            # faults only after the faulting side clears the poison, which makes it ABSENT.
            m._stale += 1
            if state != POISONED:
                win.wake(page)
            return
        node = m.vmo.cow
        voff = m._vpage + page
        if voff >= node.size:
            raise ZxError(Status.ERR_OUT_OF_RANGE, "fault past the end of the VMO")
        anonymous_root = (node.parent is None and node.page_source is None
                          and not node.is_slice and node.discardable_state != _DISCARDED)
        if anonymous_root and m.fault_around == 1:
            # The hot path of a first touch, one page per fault: `lookup_for_read_locked` of
            # an anonymous root reduced to what it does there -- its own page, or zeros.
            v = node.page_list.get(voff)
            with self.lock:
                self._install_one(m, page, v if v > 0 else ZERO_FRAME)
            return
        if anonymous_root:
            # As above, for the block around the page (`_fault_window`, inlined).
            n = m.fault_around
            vp = m._vpage
            ws = page - (vp + page) % n
            if ws < 0:
                ws = 0
            we = node.size - vp
            if we > m._npages:
                we = m._npages
            if we > ws + n:
                we = ws + n
            slots = node.page_list.dense(vp + ws, vp + we)
            if max(slots) <= 0:  # EMPTY or MARKER: zeros (a first touch of a fresh VMO)
                n = we - ws
                with self.lock:
                    if win.state[ws:we] == _ABSENT_RUN[:n]:
                        # One run of zeros, the faulting page among them: one ioctl. Absent
                        # pages have frame 0 already (`validate` checks it).
                        m._installed += n
                        m._around += n - 1
                        win.fill(ws, self._zeros_addr, n, True)
                        win.state[ws:we] = _READ_ONLY_RUN[:n]
                    else:
                        self._install_read_only(m, page, ws, [ZERO_FRAME] * n)
                return
            with self.lock:
                self._install_read_only(m, page, ws,
                                        [v if v > 0 else ZERO_FRAME for v in slots])
            return
        ws, we = self._fault_window(m, page, node)
        try:
            frames = node.lookup_for_read_locked(m._vpage + ws, we - ws)
        except NeedPages as need:
            if we - ws == 1 or need.offset == _root_offset(node, voff):
                raise  # the faulting page itself must be supplied: the request covers the run
            # A neighbour is missing: install the faulting page alone.
            ws, we = page, page + 1
            frames = node.lookup_for_read_locked(voff, 1)
        with self.lock:
            self._install_read_only(m, page, ws, frames)

    def _install_one(self, m: Mapping, page: int, frame: int) -> None:
        """`_install_read_only` of the one absent page ``page``."""
        if frame:
            if self.writer and frame in self.writer:
                self._recall(frame)
            src = self._physmap_addr + frame * PAGE_SIZE
        else:
            src = self._zeros_addr
        m._installed += 1
        win = m._win
        win.fill(page, src, 1, True)
        win.state[page] = READ_ONLY
        win.frames[page] = frame
        if frame:
            key = m._key_base | page
            rs = self.readers.get(frame)
            if rs is None:
                self.readers[frame] = {key}
            else:
                rs.add(key)

    def _install_read_only(self, m: Mapping, page: int, start: int, frames: list[int]) -> None:
        """Copy ``frames`` into the absent pages of ``[start, start + len(frames))``,
        write-protected, in runs of contiguous frames (one ``UFFDIO_COPY`` per run)."""
        win = m._win
        state = win.state
        writer = self.writer
        n = len(frames)
        runs: list[tuple[int, int, int]] = []  # (first page, first frame, count)
        if state[start: start + n] == _ABSENT_RUN[:n] and (not writer or not any(
                f in writer for f in frames)):
            # The common case, without a loop: every page absent, and the frames all zeros or
            # one run of consecutive frames (a fresh or sequentially written VMO).
            f0 = frames[0]
            if (f0 == ZERO_FRAME and not any(frames)) or (
                    f0 != ZERO_FRAME and frames[-1] == f0 + n - 1
                    and frames == list(range(f0, f0 + n))):
                self._fill_runs(m, page, [(start, f0, n)])
                return
        run_page = run_frame = run_len = 0
        for i, f in enumerate(frames):
            p = start + i
            if state[p] != ABSENT:
                continue
            if f and writer and f in writer:
                self._recall(f)
            if run_len and p == run_page + run_len and (
                    (f == ZERO_FRAME and run_frame == ZERO_FRAME)
                    or (run_frame != ZERO_FRAME and f == run_frame + run_len)):
                run_len += 1
                continue
            if run_len:
                runs.append((run_page, run_frame, run_len))
            run_page, run_frame, run_len = p, f, 1
        if run_len:
            runs.append((run_page, run_frame, run_len))
        if not runs:
            if state[page] == READ_ONLY or state[page] == WRITABLE:
                m._stale += 1
                win.wake(page)
            return
        self._fill_runs(m, page, runs)

    def _fill_runs(self, m: Mapping, page: int, runs: list[tuple[int, int, int]]) -> None:
        win = m._win
        state, wframes = win.state, win.frames
        readers = self.readers
        key_base = m._key_base
        # Counters first: the fill wakes the faulting thread, which may look at them at once.
        installed = 0
        for run in runs:
            installed += run[2]
        m._installed += installed
        if installed > 1:
            m._around += installed - 1 if state[page] == ABSENT else installed
        for p0, f0, n in runs:
            if f0 == ZERO_FRAME:
                win.fill(p0, self._zeros_addr, n, wp=True)
                wframes[p0: p0 + n] = _ZERO_FRAMES[:n]
            else:
                win.fill(p0, self._physmap_addr + f0 * PAGE_SIZE, n, wp=True)
                for j in range(n):
                    f = f0 + j
                    wframes[p0 + j] = f
                    rs = readers.get(f)
                    if rs is None:
                        readers[f] = {key_base | (p0 + j)}
                    else:
                        rs.add(key_base | (p0 + j))
            state[p0: p0 + n] = _READ_ONLY_RUN[:n]
        if state[page] != READ_ONLY:
            # The faulting page was not among them (it was present): just wake its waiter.
            win.wake(page)

    def _write_fault_locked(self, m: Mapping, page: int) -> None:
        win = m._win
        if not m._writable:
            # The store retries, and the memory protection refuses it (SIGSEGV).
            win.wake(page)
            return
        state = win.state[page]
        if state >= WRITABLE:  # WRITABLE or POISONED
            m._stale += 1
            if state == WRITABLE:
                win.wake(page)
            return
        node = m.vmo.cow
        voff = m._vpage + page
        if voff >= node.size:
            raise ZxError(Status.ERR_OUT_OF_RANGE, "fault past the end of the VMO")
        if node.is_slice or node.discardable_state == _DISCARDED:
            node._check_readable_locked()  # a discarded VMO fails the fault (ERR_NOT_FOUND)
        # The lookup may fork or commit the page, and the range change that follows would
        # punch our read-only copy out only for `_check_out` to put it back: keep it (see
        # `_change_pages`); a write lookup never changes the bytes the VMO shows.
        m._keep = page
        m._kept = False
        try:
            # One page: a larger `want` would also dirty the neighbours of a pager-backed page.
            frame = node.lookup_for_write_locked(voff)
        except BaseException:
            if m._kept:
                with self.lock:
                    self._drop_kept(m, page)
            raise
        finally:
            m._keep = -1
        with self.lock:
            self._check_out(m, page, frame)
            if m.fault_around > 1:
                self._write_around(m, page, node)

    def _check_out(self, m: Mapping, page: int, frame: int) -> None:
        """Make window page ``page`` the writable, authoritative copy of ``frame``."""
        key = m._key_base | page
        win = m._win
        state = win.state
        writer = self.writer
        holder = writer.get(frame)
        if holder is not None and holder != key:
            self._recall(frame)  # a second window writes the page: take it from the first
        rs = self.readers.get(frame)
        if rs:
            others = [k for k in rs if k != key]
            if others:
                self._drop_keys(others)
        m._checked_out += 1
        if state[page] == READ_ONLY:
            # The copy shows what the VMO showed before the write lookup, and the lookup (a
            # fork, a commit of zeros, a dirty transition) kept those bytes: no copy needed.
            old = win.frames[page]
            if old:
                self._forget_reader(old, key)
            # Clear write protection, which wakes the store (`Window.protect`, inlined).
            err = self._uffd_wp(win.uffd_fd, win.address + (page << _PAGE_SHIFT), PAGE_SIZE, 0)
            if err:
                raise OSError(-err, f"UFFDIO_WRITEPROTECT at page {page}: {os.strerror(-err)}")
        else:
            # Absent: one UFFDIO_COPY without write protection installs it writable.
            m._installed += 1
            win.fill(page, self._physmap_addr + frame * PAGE_SIZE, 1, False)
        # The bookkeeping after the ioctl that wakes the store: it overlaps the faulting
        # thread's wake-up, and the manager lock keeps it invisible until it is complete.
        state[page] = WRITABLE
        win.frames[page] = frame
        writer[frame] = key

    def _write_around(self, m: Mapping, page: int, node: CowPages) -> None:
        """Check out the neighbours that this (anonymous) VMO already owns exclusively and
        that no other window holds: no fork, commit or dirty transition is skipped."""
        base, delta = node.slice_parent() if node.is_slice else (node, 0)
        if base.is_source_preserving() or node.size <= m._vpage:
            return
        ws, we = self._fault_window(m, page, node)
        win = m._win
        state, wframes = win.state, win.frames
        seg = state[ws:we]
        if ABSENT not in seg:
            # Only a read-only copy of a frame the VMO owns can be checked out: a copy of the
            # zero page cannot (had the VMO committed that page since, a range change would
            # have dropped the copy). A sequential writer sees only those and writable pages.
            fr = wframes[ws:we]
            for i, s in enumerate(seg):
                if s == READ_ONLY and fr[i]:
                    break
            else:
                return
        slots = base.page_list.dense(m._vpage + ws + delta, m._vpage + we + delta)
        slots[page - ws] = 0
        # Neighbours the VMO owns and this window does not have writable yet (a sequential
        # writer of a fresh VMO has none: the pages behind it are writable, those ahead are
        # not committed).
        owned = [i for i, v in enumerate(slots) if v > 0 and state[ws + i] < WRITABLE]
        if not owned:
            return
        readers, writer = self.readers, self.writer
        key_base = m._key_base
        promote: list[int] = []
        fill: list[tuple[int, int]] = []
        for i in owned:
            q = ws + i
            slot = slots[i]
            s = state[q]
            if slot in writer:
                continue
            rs = readers.get(slot)
            if s == READ_ONLY:
                if wframes[q] != slot or rs is None or len(rs) != 1:
                    continue
                promote.append(q)
            elif not rs:
                fill.append((q, slot))
        for p0, n in _runs(promote):
            win.protect(p0, n, False)
            for q in range(p0, p0 + n):
                f = wframes[q]
                del readers[f]
                writer[f] = key_base | q
                state[q] = WRITABLE
            m._checked_out += n
        i = 0
        while i < len(fill):
            p0, f0 = fill[i]
            n = 1
            while (i + n < len(fill) and fill[i + n][0] == p0 + n
                   and fill[i + n][1] == f0 + n):
                n += 1
            win.fill(p0, self._physmap_addr + f0 * PAGE_SIZE, n, wp=False)
            for j in range(n):
                state[p0 + j] = WRITABLE
                wframes[p0 + j] = f0 + j
                writer[f0 + j] = key_base | (p0 + j)
            m._installed += n
            m._around += n
            m._checked_out += n
            i += n

    def _fail_locked(self, m: Mapping, page: int, status: Status) -> None:
        """The fault at ``page`` cannot be resolved: poison the page so that the access (and
        any other waiting on it) gets SIGBUS, reported by the accessor as ``status``."""
        m._failed += 1
        m._failures[page] = status
        win = m._win
        with self.lock:
            s = win.state[page]
            if s in (READ_ONLY, WRITABLE):
                f = win.frames[page]
                if s == WRITABLE:
                    self._recall(f)
                self._drop_keys([m._key_base | page])
            elif s == POISONED:
                # Poisoned already: the faulting side has not cleared it, so nobody waits.
                return
            try:
                win.punch(page, 1)  # in case something is there after all
                win.poison(page)
            except OSError:
                win.wake(page)
                return
            win.state[page] = POISONED

    def _dead_fault_locked(self, m: Mapping, page: int) -> None:
        if not m._win.closed:
            m._win.kill_page(page)

    def _consume_failure(self, m: Mapping, page: int) -> Status:
        """An accessor took SIGBUS at ``page``: the failure's status; clear the poison so that
        the next access faults (and asks again)."""
        with self.lock:
            status = m._failures.get(page, Status.ERR_IO)
            win = m._win
            if 0 <= page < m._npages and win.state[page] == POISONED and not m._dead:
                try:
                    win.clear_poison_here(page)
                except OSError:
                    pass
                else:
                    win.state[page] = ABSENT
            return status

    # ---------------------------------------------------------------- coherence

    def _recall(self, frame: int) -> None:
        """Copy a checked-out frame's window page back into it; the page stays a read-only
        copy. Write protection goes on first, so no store can slip in after the copy."""
        key = self.writer.pop(frame)
        m = self.mappings[key >> 32]
        page = key & _PAGE_MASK
        win = m._win
        with contextlib.suppress(OSError):  # a workload's process gone: nobody can store
            win.protect(page, 1, True)
        base = frame * PAGE_SIZE
        off = page * PAGE_SIZE
        self.pmm.physmap[base: base + PAGE_SIZE] = win.alias[off: off + PAGE_SIZE]
        win.state[page] = READ_ONLY
        rs = self.readers.get(frame)
        if rs is None:
            self.readers[frame] = {key}
        else:
            rs.add(key)
        m._recalls += 1

    def _forget_reader(self, frame: int, key: int) -> None:
        rs = self.readers.get(frame)
        if rs is not None:
            rs.discard(key)
            if not rs:
                del self.readers[frame]

    def _drop_keys(self, keys: Iterable[int]) -> None:
        """Drop window pages (read-only copies, or checked-out pages already recalled or
        whose frame is going away): untrack them and punch them out of their windows."""
        by_mapping: dict[int, list[int]] = {}
        for key in keys:
            by_mapping.setdefault(key >> 32, []).append(key & _PAGE_MASK)
        for mid, pages in by_mapping.items():
            m = self.mappings.get(mid)
            if m is None:
                continue
            self._drop_pages(m, pages)

    def _drop_pages(self, m: Mapping, pages: list[int]) -> None:
        win = m._win
        state, wframes = win.state, win.frames
        key_base = m._key_base
        gone = []
        for p in pages:
            s = state[p]
            if s != READ_ONLY and s != WRITABLE:
                continue
            f = wframes[p]
            if s == READ_ONLY:
                if f:
                    self._forget_reader(f, key_base | p)
            elif self.writer.get(f) == key_base | p:
                del self.writer[f]
            state[p] = ABSENT
            wframes[p] = 0
            gone.append(p)
        if not gone:
            return
        gone.sort()
        for p0, n in _runs(gone):
            with contextlib.suppress(OSError):
                win.punch(p0, n)
        m._dropped += len(gone)

    def before_read(self, frames: Sequence[int]) -> None:
        if not self.writer:
            return
        with self.lock:
            writer = self.writer
            for f in frames:
                if f in writer:
                    self._recall(f)

    def before_write(self, frames: Sequence[int]) -> None:
        if not self.writer and not self.readers:
            return
        with self.lock:
            keys: list[int] = []
            for f in frames:
                if f in self.writer:
                    self._recall(f)
                rs = self.readers.get(f)
                if rs:
                    keys.extend(rs)
            if keys:
                self._drop_keys(keys)

    def on_free(self, frames: Sequence[int]) -> None:
        if not self.writer and not self.readers:
            return
        with self.lock:
            keys: list[int] = []
            for f in frames:
                k = self.writer.get(f)
                if k is not None:
                    keys.append(k)
                rs = self.readers.get(f)
                if rs:
                    keys.extend(rs)
            if keys:
                self._drop_keys(keys)

    def on_range_change(self, node: CowPages, start: int, end: int, op: RangeChangeOp) -> None:
        """What ``node`` shows in ``[start, end)`` changed (UNMAP) or became shared
        (REMOVE_WRITE): update the windows of the mappings of ``node``'s VMO."""
        vmo = node.paged_ref
        if vmo is None:
            return
        maps = vmo.mappings
        if not maps or vmo.cow is not node:
            return
        drop = op == _UNMAP
        if end - start == 1 and len(maps) == 1:
            # One page (a commit, a fork) of a VMO mapped once: the common case, inline.
            m = maps[0]
            p = start - m._vpage
            if m._dead or not 0 <= p < m._npages:
                return
            win = m._win
            # Nothing to do for an absent or poisoned page. Only the faulting side changes
            # such a state without the hierarchy lock (POISONED to ABSENT), so it is read
            # before taking the manager lock.
            s = win.state[p]
            if s in (ABSENT, POISONED):
                return
            with self.lock:
                if drop and m._keep == p and win.state[p] == READ_ONLY:
                    # The page a write fault is checking out (see `_change_pages`).
                    f = win.frames[p]
                    if f:
                        self._forget_reader(f, m._key_base | p)
                    win.frames[p] = ZERO_FRAME
                    m._kept = True
                else:
                    self._change_pages(m, p, p + 1, drop)
            return
        with self.lock:
            for m in maps:
                if m._dead:
                    continue
                vpage = m._vpage
                p0 = start - vpage if start > vpage else 0
                p1 = end - vpage
                if p1 > m._npages:
                    p1 = m._npages
                if p0 < p1:
                    self._change_pages(m, p0, p1, drop)

    def _change_pages(self, m: Mapping, p0: int, p1: int, drop: bool) -> None:
        """Recall the checked-out pages of ``[p0, p1)``; with ``drop`` also drop every copy."""
        state, wframes = m._win.state, m._win.frames
        present = []
        keep = m._keep
        p = p0
        while p < p1:
            s = state[p]
            if s == WRITABLE:
                self._recall(wframes[p])
                present.append(p)
            elif s == READ_ONLY:
                if drop and keep == p:
                    # The page a write fault is checking out: untrack its copy but leave it in
                    # the window for `_check_out` to make writable.
                    f = wframes[p]
                    if f:
                        self._forget_reader(f, m._key_base | p)
                    wframes[p] = ZERO_FRAME
                    m._kept = True
                else:
                    present.append(p)
            p += 1
        if drop and present:
            self._drop_pages(m, present)

    def _drop_kept(self, m: Mapping, page: int) -> None:
        """The write lookup failed after its range change: drop the page it kept."""
        win = m._win
        if win.state[page] == READ_ONLY and win.frames[page] == ZERO_FRAME:
            win.state[page] = ABSENT
            with contextlib.suppress(OSError):
                win.punch(page, 1)
            m._dropped += 1

    # ---------------------------------------------------------------- protect / teardown

    def _protect(self, m: Mapping, perms: Perms) -> None:
        import vmo.mmu.uffd as uffd

        with m.vmo._hier.lock, self.lock:
            if m._dead:
                raise ZxError(Status.ERR_BAD_STATE, "protect of an unmapped mapping")
            try:
                uffd.mprotect(m._win.local_address, m._length, _prot(perms))
            except OSError as e:
                raise ZxError(Status.ERR_NO_RESOURCES, f"mprotect failed: {e}") from e
            if not perms & Perms.WRITE:
                # Nothing can store any more: give the frames their bytes back now.
                self._change_pages(m, 0, m._npages, False)
            m._perms = perms
            m._writable = bool(perms & Perms.WRITE)

    def _forget_locked(self, m: Mapping) -> None:
        """Recall ``m``'s checked-out pages and untrack every page (manager lock held)."""
        win = m._win
        state, wframes = win.state, win.frames
        key_base = m._key_base
        for p in range(m._npages):
            s = state[p]
            if s == WRITABLE:
                self._recall(wframes[p])
                s = READ_ONLY
            if s == READ_ONLY:
                f = wframes[p]
                if f:
                    self._forget_reader(f, key_base | p)
            state[p] = ABSENT
            wframes[p] = 0
        self.mappings.pop(m._id, None)

    def _teardown(self, m: Mapping) -> None:
        vmo = m.vmo
        with vmo._hier.lock:
            with self.lock:
                if m._dead:
                    return
                # Recall first: every store made so far lands in the VMO.
                self._forget_locked(m)
                m._dead = True
            with contextlib.suppress(ValueError):
                vmo.mappings.remove(m)
            # Threads waiting on faults, and later accesses, get SIGBUS (ERR_BAD_STATE).
            m._win.kill()
        self.handler.remove(m._win.uffd_fd, then=lambda: self._close_window(m))
        if not m.remote:
            self._wait_for_users(m)
        hook, m._on_unmap = m._on_unmap, None
        if hook is not None:
            try:
                hook(m)
            except Exception:  # noqa: BLE001 - the mapping is gone here whatever it says
                import traceback

                self.handler.errors.append(traceback.format_exc())

    def _close_window(self, m: Mapping) -> None:
        with m.vmo._hier.lock:
            m._win.uffd_fd = -1
            m._win.close()

    def _wait_for_users(self, m: Mapping) -> None:
        """Unmap the local faulting mapping once no accessor is inside it. Accessors wake up to
        SIGBUS quickly (`Window.kill`); one that does not within the grace period leaves the
        memory mapped (leaked, never reused under a running copy)."""
        deadline = time.monotonic() + 10.0
        with m._users_cond:
            while m._users:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.handler.errors.append(
                        f"{m!r}: an accessor did not leave within 10 s; its memory stays mapped")
                    return
                m._users_cond.wait(remaining)
        m._win.unmap_here()

    def shutdown(self) -> None:
        """Kernel close: unmap every mapping, stop the fault handler, detach from the arena."""
        with self.lock:
            self.closed = True
            maps = list(self.mappings.values())
        for m in maps:
            try:
                m._teardown()
            except Exception:  # noqa: BLE001 - keep closing the rest
                import traceback

                self.handler.errors.append(traceback.format_exc())
        self.handler.stop()
        kernel = self._kernel_ref()
        if kernel is not None:
            with contextlib.suppress(ValueError):
                kernel.state.range_change_listeners.remove(self.on_range_change)
        if self.pmm.coherence is self:
            self.pmm.coherence = None

    # ---------------------------------------------------------------- checking

    def validate(self) -> None:
        """Check the reverse map, the window states and the window bytes against the VMOs.

        Raises `vmo.InvariantError` naming the mapping, page and invariant. Takes every
        hierarchy lock of a mapped VMO in turn, then the manager lock.
        """
        from vmo.errors import InvariantError

        for m in list(self.mappings.values()):
            with m.vmo._hier.lock, self.lock:
                if m._dead or m._id not in self.mappings:
                    continue
                self._validate_mapping(m, InvariantError)
        with self.lock:
            for f, rs in self.readers.items():
                if not rs:
                    raise InvariantError(f"frame {f}: empty reader set")
                if f in self.writer:
                    raise InvariantError(f"frame {f}: checked out and copied read-only")
                for key in rs:
                    r = self.mappings.get(key >> 32)
                    p = key & _PAGE_MASK
                    if r is None or r._win.state[p] != READ_ONLY or r._win.frames[p] != f:
                        raise InvariantError(f"frame {f}: stale reader {r!r} page {p}")
            for f, key in self.writer.items():
                w = self.mappings.get(key >> 32)
                p = key & _PAGE_MASK
                if w is None or w._win.state[p] != WRITABLE or w._win.frames[p] != f:
                    raise InvariantError(f"frame {f}: stale writer {w!r} page {p}")

    def _validate_mapping(self, m: Mapping, error: type[Exception]) -> None:
        node = m.vmo.cow
        base, delta = node.slice_parent() if node.is_slice else (node, 0)
        pmm = self.pmm
        win = m._win
        for p in range(m._npages):
            s = win.state[p]
            if s in (ABSENT, POISONED):
                if win.frames[p]:
                    raise error(f"{m!r} page {p}: absent or poisoned, with frame "
                                f"{win.frames[p]}")
                continue
            where = f"{m!r} page {p}"
            voff = m._vpage + p
            f = win.frames[p]
            if voff >= node.size:
                raise error(f"{where}: present past the end of the VMO")
            if s == WRITABLE:
                if self.writer.get(f) != m._key_base | p:
                    raise error(f"{where}: checked out but not the writer of frame {f}")
                if base.page_list.get(voff + delta) != f:
                    raise error(f"{where}: checked-out frame {f} is not the VMO's own page")
                continue
            if f and m._key_base | p not in self.readers.get(f, ()):
                raise error(f"{where}: read-only copy of frame {f} not in its reader set")
            shown, absent = base.resolve_range(voff + delta, voff + delta + 1)
            if absent or shown[0] != f:
                raise error(f"{where}: read-only copy of frame {f}, the VMO shows {shown[0]}")
            off = p * PAGE_SIZE
            if f:
                good = win.alias[off: off + PAGE_SIZE] == pmm.physmap[f * PAGE_SIZE:
                                                                      (f + 1) * PAGE_SIZE]
            else:
                good = win.alias[off: off + PAGE_SIZE] == self._zeros[:PAGE_SIZE]
            if not good:
                raise error(f"{where}: read-only copy differs from frame {f}")


def _runs(pages: Sequence[int]) -> list[tuple[int, int]]:
    """``(first, count)`` runs of consecutive values in the sorted ``pages``."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(pages)
    while i < n:
        j = i + 1
        while j < n and pages[j] == pages[i] + (j - i):
            j += 1
        out.append((pages[i], j - i))
        i = j
    return out


def _root_offset(node: CowPages, off: int) -> int:
    """Offset ``off`` of ``node`` in its root's coordinates (`NeedPages.offset` units)."""
    base, delta = node.slice_parent() if node.is_slice else (node, 0)
    return base.root_parent_offset + delta + off


def manager_for(kernel: Kernel, *, create: bool = True) -> MappingManager | None:
    """The kernel's `MappingManager`, created (with its fault handler thread) on first use."""
    mgr = _managers.get(kernel)
    if mgr is not None or not create:
        return mgr
    with _managers_lock:
        mgr = _managers.get(kernel)
        if mgr is None:
            kernel._check_open()
            mgr = MappingManager(kernel)
            _managers[kernel] = mgr
    return mgr


def check_fault_around(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"fault_around must be an int, not {type(value).__name__}")
    if not 1 <= value <= MAX_FAULT_AROUND:
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"fault_around {value} is not in [1, {MAX_FAULT_AROUND}]")
    return value


def check_map_args(vmo: Vmo, offset: Any, length: Any, perms: Any,
                   fault_around: Any) -> tuple[int, int, Perms, int | None]:
    """`Vmo.map`'s argument checks, in Zircon's order: the handle, then alignment and an
    empty range (``ERR_INVALID_ARGS``), then the range (``ERR_OUT_OF_RANGE``), then rights
    (``ERR_ACCESS_DENIED``). Returns ``(offset, length, perms, fault_around)``."""
    vmo._check_open()
    offset = _args.u64("offset", offset)
    if length is not None:
        length = _args.u64("length", length)
    perms = _args.flags("perms", perms, Perms)
    around = check_fault_around(fault_around)
    _args.aligned("offset", offset)
    if length is not None:
        _args.aligned("length", length)
        if length == 0:
            raise ZxError(Status.ERR_INVALID_ARGS, "cannot map an empty range")
    with vmo._hier.lock:
        vmo._check_open()
        size = vmo.cow.size * PAGE_SIZE
        if length is None:
            if offset >= size:
                raise ZxError(Status.ERR_OUT_OF_RANGE if offset > size
                              else Status.ERR_INVALID_ARGS,
                              f"nothing to map from offset {offset:#x} of a VMO of "
                              f"{size:#x} bytes")
            length = size - offset
        _args.in_range("map", offset, length, size)
    _check_perms(perms, vmo)
    return offset, length, perms, around


def map_vmo(vmo: Vmo, offset: int, length: int, perms: Perms,
            fault_around: int | None) -> Mapping:
    """`Vmo.map` after its argument checks."""
    from vmo.mmu.fault_handler import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise ZxError(Status.ERR_NOT_SUPPORTED, reason)
    mgr = manager_for(vmo._kernel)
    assert mgr is not None
    around = mgr.fault_around if fault_around is None else fault_around
    return mgr.map_local(vmo, offset, length, perms, around)


def validate(kernel: Kernel) -> None:
    """Check every mapping of ``kernel`` (see `MappingManager.validate`); no-op without any."""
    mgr = manager_for(kernel, create=False)
    if mgr is not None:
        mgr.validate()


def shutdown(kernel: Kernel) -> None:
    """`Kernel.close` calls this first: unmap everything and stop the fault handler."""
    mgr = manager_for(kernel, create=False)
    if mgr is not None:
        mgr.shutdown()


__all__ = [
    "DEFAULT_FAULT_AROUND",
    "MAX_FAULT_AROUND",
    "FaultStats",
    "Mapping",
    "MappingManager",
    "check_map_args",
    "manager_for",
    "map_vmo",
    "shutdown",
    "validate",
]


class _MemoryManagementUnit:
    """This layer as the objects see it (`vmo.vm_object.MemoryManagementUnit`)."""

    def map(self, vmo: Vmo, offset: Any, length: Any, perms: Any,
            fault_around: Any) -> Mapping:
        offset, length, perms, around = check_map_args(vmo, offset, length, perms, fault_around)
        return map_vmo(vmo, offset, length, perms, around)

    def shutdown(self, kernel: Kernel) -> None:
        shutdown(kernel)


install_mmu(_MemoryManagementUnit())
