"""`Vmo`: the handle users hold, with Zircon's argument checks over one `CowPages` node.

Every public method checks its arguments first (a bad argument changes nothing), then takes the
hierarchy lock and calls into `vmo.cow_pages`. When the hierarchy needs a page source to act it
raises `NeedPages` under the lock; `_locked_retry` then drops the lock, waits for the request and
retries the whole operation from the top, as Zircon does with ``ZX_ERR_SHOULD_WAIT``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import vmo._args as _args
import vmo.trace as trace
from vmo.cow_pages import COMMIT_CHUNK, CowPages, NeedPages
from vmo.errors import Status, ZxError
from vmo.pmm import PAGE_SIZE
from vmo.types import ChildOptions, LockState, Perms, VmoInfo, VmoInfoFlags, VmoOp

if TYPE_CHECKING:
    from vmo.kernel import Kernel
    from vmo.mmu.mapping import Mapping

T = TypeVar("T")
MAX_NAME_LEN = 31
#: The largest read that can return its bytes: half of this host's memory.
MAX_READ = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
_CHILD_KINDS = (ChildOptions.SNAPSHOT | ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE
                | ChildOptions.SLICE)


class MemoryManagementUnit(Protocol):
    """What the objects need of the layer that maps VMOs into memory (`vmo.mmu`), which sits
    above them: `Vmo.map` and `Kernel.close` call up only through this protocol, and
    `vmo.mmu.mapping` installs the implementation (`install_mmu`) when it is imported, as the
    package `vmo` does. The objects layer thus never imports the MMU."""

    def map(self, vmo: Vmo, offset: Any, length: Any, perms: Any,
            fault_around: Any) -> Mapping:
        """Check the arguments of `Vmo.map` and map the range (``zx_vmar_map``)."""
        ...

    def shutdown(self, kernel: Kernel) -> None:
        """Unmap every mapping of ``kernel`` and stop its fault handler (`Kernel.close`)."""
        ...


_mmu: MemoryManagementUnit | None = None


def install_mmu(mmu: MemoryManagementUnit) -> None:
    """Make ``mmu`` the memory-management unit `Vmo.map` and `Kernel.close` call."""
    global _mmu
    _mmu = mmu


def installed_mmu() -> MemoryManagementUnit | None:
    """The memory-management unit, or None when `vmo.mmu.mapping` has not been imported."""
    return _mmu


_LOCK_OPS = frozenset({VmoOp.LOCK, VmoOp.TRY_LOCK, VmoOp.UNLOCK})
_WRITING_OPS = frozenset({VmoOp.COMMIT, VmoOp.DECOMMIT, VmoOp.ZERO})


class Vmo:
    """A virtual memory object (``zx_vmo_*``). Create with `Kernel.vmo_create`."""

    def __init__(self, kernel: Kernel, cow: CowPages, *, resizable: bool, discardable: bool,
                 writable: bool = True, parent: Vmo | None = None,
                 is_cow_clone: bool = False) -> None:
        self._kernel = kernel
        self.cow = cow  # re-pointed by the hierarchy when a snapshot hides our node
        cow.paged_ref = self
        self._hier = cow.hier
        self.koid = kernel._next_koid()
        cow.page_attribution_user_id = self.koid
        self._name = ""
        self._resizable = resizable
        self._discardable = discardable
        self._writable = writable
        self._parent = parent
        self._parent_koid = parent.koid if parent is not None else 0
        self._is_cow_clone = is_cow_clone
        self._num_children = 0
        self._closed = False
        self.mappings: list[Mapping] = []
        self._pins: set[PinnedRange] = set()
        kernel._register(self)
        if (tracer := kernel.state.tracer) is not None:
            tracer.emit(trace.VmoCreate, koid=self.koid, node=cow.id, size=cow.size,
                        parent_koid=self._parent_koid)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.cow.size * PAGE_SIZE:#x} bytes"
        name = f" {self._name!r}" if self._name else ""
        return f"<Vmo koid={self.koid}{name} {state}>"

    # ---------------------------------------------------------------- plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise ZxError(Status.ERR_BAD_HANDLE, f"VMO koid {self.koid} is closed")
        if self._kernel.closed:
            raise ZxError(Status.ERR_BAD_HANDLE, "the kernel is closed")

    def _locked_retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` under the hierarchy lock; wait outside the lock for page sources.

        The request is registered with the source before the lock is dropped, so a supply
        that lands in between still completes it.
        """
        while True:
            with self._hier.lock:
                self._check_open()
                try:
                    return fn()
                except NeedPages as need:
                    source = need.node.page_source
                    if source is None:
                        raise ZxError(Status.ERR_INTERNAL, "page request without a source") from None
                    request = source.register_locked(need)
            source.wait(request, self._kernel.page_request_timeout)

    def _size(self) -> int:
        return self.cow.size * PAGE_SIZE

    def _require_write(self, what: str) -> None:
        if not self._writable:
            raise ZxError(Status.ERR_ACCESS_DENIED, f"{what} needs a writable VMO (NO_WRITE child)")

    # ---------------------------------------------------------------- read / write

    def read(self, length: int, offset: int = 0) -> bytes:
        """Read ``length`` bytes at ``offset`` (``zx_vmo_read``)."""
        self._check_open()
        length = _args.u64("length", length)
        offset = _args.u64("offset", offset)

        def op() -> bytes:
            _args.in_range("read", offset, length, self._size())
            if length > MAX_READ:
                raise ZxError(Status.ERR_NO_MEMORY,
                              f"a read of {length} bytes cannot fit in this host's memory")
            return self.cow.read_locked(offset, length)

        return self._locked_retry(op)

    def write(self, data: Any, offset: int = 0) -> None:
        """Write the bytes-like ``data`` at ``offset`` (``zx_vmo_write``)."""
        self._check_open()
        view = _args.data_view("data", data)
        offset = _args.u64("offset", offset)
        self._require_write("write")

        def op() -> None:
            _args.in_range("write", offset, len(view), self._size())
            self.cow.write_locked(view, offset)

        self._locked_retry(op)

    def write_from_fd(self, fd: int, length: int, offset: int = 0, fd_offset: int = 0) -> int:
        """Fill ``[offset, offset + length)`` from the file ``fd`` at ``fd_offset``: a
        ``zx_vmo_write`` whose data comes straight from a file (``preadv`` into the VMO's pages,
        no intermediate copy). Bytes past the end of the file are written as zeros. Returns the
        bytes read from the file. An I/O error (``ERR_IO``) may leave part of the range
        written."""
        self._check_open()
        fd = _args.fd("fd", fd, read=True)
        length = _args.u64("length", length)
        offset = _args.u64("offset", offset)
        fd_offset = _args.u64("fd_offset", fd_offset)
        self._require_write("write_from_fd")

        def op() -> int:
            _args.in_range("write", offset, length, self._size())
            return self.cow.write_from_fd_locked(fd, offset, length, fd_offset)

        return self._locked_retry(op)

    def read_to_fd(self, fd: int, length: int, offset: int = 0, fd_offset: int = 0) -> int:
        """Write ``[offset, offset + length)`` to the file ``fd`` at ``fd_offset``: a
        ``zx_vmo_read`` whose destination is a file (``pwritev`` straight from the VMO's pages).
        Returns the bytes written."""
        self._check_open()
        fd = _args.fd("fd", fd, write=True)
        length = _args.u64("length", length)
        offset = _args.u64("offset", offset)
        fd_offset = _args.u64("fd_offset", fd_offset)

        def op() -> int:
            _args.in_range("read", offset, length, self._size())
            return self.cow.read_to_fd_locked(fd, offset, length, fd_offset)

        return self._locked_retry(op)

    # ---------------------------------------------------------------- size

    def get_size(self) -> int:
        with self._hier.lock:
            self._check_open()
            return self._size()

    def set_size(self, size: int) -> None:
        """Resize (``zx_vmo_set_size``): only VMOs created ``RESIZABLE``."""
        self._check_open()
        size = _args.page_size_round("size", size)
        if not self._resizable:
            raise ZxError(Status.ERR_UNAVAILABLE, "VMO is not resizable")
        self._require_write("set_size")

        def op() -> None:
            cow = self.cow
            if (cow.root_parent_offset + size // PAGE_SIZE) * PAGE_SIZE >= _args.U64:
                raise ZxError(Status.ERR_OUT_OF_RANGE,
                              f"size {size:#x} at offset {cow.root_parent_offset * PAGE_SIZE:#x} "
                              "of the root overflows")
            cow.resize_locked(size // PAGE_SIZE)
            if cow.is_source_preserving():
                # Any successful resize counts as a modification for the pager's stats (Zircon's
                # VmObjectPaged::Resize marks the VMO modified), even to the same size.
                cow.modified = True
            for m in list(self.mappings):
                m._on_vmo_resized()

        self._locked_retry(op)

    # ---------------------------------------------------------------- op_range

    def op_range(self, op: VmoOp, offset: int, size: int) -> LockState | None:
        """``zx_vmo_op_range``. Returns a `LockState` for LOCK, else None."""
        self._check_open()
        op = _args.enum_value("op", op, VmoOp)
        offset = _args.u64("offset", offset)
        size = _args.u64("size", size)
        if op in _LOCK_OPS:
            return self._discardable_op(op, offset, size)
        if op in _WRITING_OPS:
            self._require_write(op.name)

        def run() -> LockState | None:
            vsize = self._size()
            cow = self.cow
            if op == VmoOp.DECOMMIT:
                # Zircon trims the range to the VMO before checking alignment.
                if offset > vsize:
                    raise ZxError(Status.ERR_OUT_OF_RANGE,
                                  f"DECOMMIT offset {offset:#x} is past the end {vsize:#x}")
                length = min(size, vsize - offset)
                if length == 0:
                    return None
                # Zircon asks whether an absent page reads zero before it checks alignment.
                target = cow.slice_parent()[0] if cow.is_slice else cow
                if target.parent is not None:
                    raise ZxError(Status.ERR_NOT_SUPPORTED,
                                  "DECOMMIT is not supported on a (non-slice) child VMO")
                if target.is_source_preserving() and target.anonymous_source() is None:
                    raise ZxError(Status.ERR_NOT_SUPPORTED,
                                  "DECOMMIT is not supported on a pager-backed VMO")
                if offset % PAGE_SIZE or length % PAGE_SIZE:
                    raise ZxError(Status.ERR_INVALID_ARGS,
                                  f"DECOMMIT range [{offset:#x}, +{length:#x}) is not page aligned")
                cow.decommit_range_locked(offset // PAGE_SIZE, (offset + length) // PAGE_SIZE)
                return None
            _args.in_range(op, offset, size, vsize)
            if size == 0:
                return None
            first = offset // PAGE_SIZE
            end = (offset + size + PAGE_SIZE - 1) // PAGE_SIZE
            if op == VmoOp.COMMIT:
                cow.commit_range_locked(first, end)
            elif op == VmoOp.ZERO:
                cow.zero_bytes_locked(offset, size)
            elif op == VmoOp.PREFETCH:
                cow._check_readable_locked()
                target, delta = cow.slice_parent() if cow.is_slice else (cow, 0)
                if not target.is_pager_backed():
                    return None  # anonymous content needs no fetching
                for chunk in range(first + delta, end + delta, COMMIT_CHUNK):
                    chunk_end = min(end + delta, chunk + COMMIT_CHUNK)
                    if target.page_list.is_full_range(chunk, chunk_end):
                        continue  # all here already (the usual case once loaded)
                    _, absent = target.resolve_range(chunk, chunk_end)
                    if absent:
                        raise NeedPages(target.root(), absent[0], len(absent))
            elif op in (VmoOp.DONT_NEED, VmoOp.ALWAYS_NEED):
                self._kernel._hint_locked(cow, first, end, op == VmoOp.ALWAYS_NEED)
            # Cache operations are accepted and have no effect on this coherent machine.
            return None

        return self._locked_retry(run)

    def _discardable_op(self, op: VmoOp, offset: int, size: int) -> LockState | None:
        if not self._discardable:
            raise ZxError(Status.ERR_NOT_SUPPORTED, f"{op.name} needs a DISCARDABLE VMO")
        with self._hier.lock:
            self._check_open()
            vsize = self._size()
            if offset != 0 or size != vsize:
                raise ZxError(Status.ERR_OUT_OF_RANGE,
                              f"{op.name} must cover the whole VMO [0, {vsize:#x}), "
                              f"not [{offset:#x}, +{size:#x})")
            cow = self.cow
            if op == VmoOp.UNLOCK:
                cow.unlock_locked()
                return None
            discarded = cow.lock_locked(try_only=op == VmoOp.TRY_LOCK)
            if op == VmoOp.TRY_LOCK:
                return None
            return LockState(offset=0, size=vsize, discarded_offset=0,
                             discarded_size=vsize if discarded else 0)

    # ---------------------------------------------------------------- children

    def create_child(self, options: ChildOptions, offset: int, size: int) -> Vmo:
        """``zx_vmo_create_child``: a snapshot, at-least-on-write clone, or slice."""
        self._check_open()
        opts = _args.flags("options", options, ChildOptions)
        offset = _args.u64("offset", offset)
        size = _args.page_size_round("size", size)
        kinds = opts & _CHILD_KINDS
        if kinds not in (ChildOptions.SNAPSHOT, ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE,
                         ChildOptions.SLICE):
            raise ZxError(Status.ERR_INVALID_ARGS,
                          "options must name exactly one of SNAPSHOT, "
                          "SNAPSHOT_AT_LEAST_ON_WRITE, SLICE")
        if kinds == ChildOptions.SLICE and opts & ChildOptions.RESIZABLE:
            raise ZxError(Status.ERR_INVALID_ARGS, "a SLICE cannot be RESIZABLE")
        _args.aligned("offset", offset)
        if offset + size >= _args.U64:
            raise ZxError(Status.ERR_OUT_OF_RANGE,
                          f"offset {offset:#x} + size {size:#x} overflows 64 bits")
        self._check_open()
        if self._discardable:
            raise ZxError(Status.ERR_NOT_SUPPORTED, "a DISCARDABLE VMO cannot have children")

        def op() -> Vmo:
            cow = self.cow
            if kinds == ChildOptions.SLICE:
                if self._resizable:
                    raise ZxError(Status.ERR_NOT_SUPPORTED, "cannot slice a resizable VMO")
                if offset + size > self._size():
                    raise ZxError(Status.ERR_INVALID_ARGS,
                                  f"slice [{offset:#x}, +{size:#x}) is not inside the VMO "
                                  f"of {self._size():#x} bytes")
                node = cow.create_slice_locked(offset // PAGE_SIZE, size // PAGE_SIZE)
                child = Vmo(self._kernel, node, resizable=False, discardable=False,
                            writable=self._writable and not opts & ChildOptions.NO_WRITE,
                            parent=self)
            else:
                # A hierarchy of an anonymous page source (swap) behaves as anonymous memory:
                # its at-least-on-write clones are snapshots too.
                pager_backed = cow.is_pager_backed() and not cow.acts_anonymous()
                snapshot = kinds == ChildOptions.SNAPSHOT or not pager_backed
                if cow.is_slice and snapshot:
                    raise ZxError(Status.ERR_NOT_SUPPORTED, "cannot snapshot a slice")
                if kinds == ChildOptions.SNAPSHOT and pager_backed:
                    raise ZxError(Status.ERR_NOT_SUPPORTED,
                                  "SNAPSHOT of a pager-backed VMO; use SNAPSHOT_AT_LEAST_ON_WRITE")
                if cow.root_parent_offset * PAGE_SIZE + offset + size >= _args.U64:
                    raise ZxError(Status.ERR_OUT_OF_RANGE, "child range overflows the root")
                # On the slice's own node when it is a slice (seed: CreateCloneLocked): the
                # clone sees no more than the slice does.
                node = cow.create_clone_locked(snapshot, offset // PAGE_SIZE, size // PAGE_SIZE)
                child = Vmo(self._kernel, node, resizable=bool(opts & ChildOptions.RESIZABLE),
                            discardable=False, writable=not opts & ChildOptions.NO_WRITE,
                            parent=self, is_cow_clone=True)
            self._num_children += 1
            if (tracer := self._kernel.state.tracer) is not None:
                trace.cloned(tracer, self, child, kinds.name or "", offset, size)
            return child

        return self._locked_retry(op)

    # ---------------------------------------------------------------- info and properties

    def get_info(self) -> VmoInfo:
        with self._hier.lock:
            self._check_open()
            cow = self.cow
            flags = VmoInfoFlags.PAGED | VmoInfoFlags.VIA_HANDLE
            if self._resizable:
                flags |= VmoInfoFlags.RESIZABLE
            if self._is_cow_clone:
                flags |= VmoInfoFlags.IS_COW_CLONE
            if cow.is_pager_backed():
                flags |= VmoInfoFlags.PAGER_BACKED
            if self._discardable:
                flags |= VmoInfoFlags.DISCARDABLE
            if self.mappings:
                flags |= VmoInfoFlags.VIA_MAPPING
            attributed = cow.committed_pages_locked()
            if cow.is_slice:
                base, delta = cow.slice_parent()
                populated = base.page_list.count_pages(delta, delta + cow.size)
            else:
                populated = cow.page_list.count_pages()
            return VmoInfo(
                koid=self.koid, name=self._name, size_bytes=self._size(),
                parent_koid=self._parent_koid, num_children=self._num_children,
                num_mappings=len(self.mappings), share_count=1, flags=flags,
                committed_bytes=attributed * PAGE_SIZE, populated_bytes=populated * PAGE_SIZE)

    @property
    def name(self) -> str:
        self._check_open()
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._check_open()
        self._name = _args.name(value, MAX_NAME_LEN)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def writable(self) -> bool:
        return self._writable

    # ---------------------------------------------------------------- mappings

    def map(self, offset: int = 0, length: int | None = None,
            perms: Perms = Perms.READ | Perms.WRITE, *,
            fault_around: int | None = None) -> Mapping:
        """Map ``[offset, offset + length)`` (default: to the end) into this process
        (``zx_vmar_map``); see `vmo.Mapping`.

        ``fault_around``: pages a fault may install at once (the aligned block containing the
        faulting page; default `vmo.mmu.mapping.DEFAULT_FAULT_AROUND`, 1 for one page per fault).
        Errors: ``ERR_INVALID_ARGS`` (unaligned or empty range, WRITE without READ),
        ``ERR_OUT_OF_RANGE``, ``ERR_ACCESS_DENIED`` (WRITE on a VMO without write rights),
        ``ERR_NOT_SUPPORTED`` (no userfaultfd on this machine).
        """
        mmu = installed_mmu()
        if mmu is None:
            raise ZxError(Status.ERR_NOT_SUPPORTED,
                          "no memory-management unit installed (import vmo.mmu.mapping)")
        return mmu.map(self, offset, length, perms, fault_around)

    # ---------------------------------------------------------------- pinning

    def pin(self, offset: int, size: int, writable: bool = True) -> PinnedRange:
        """Commit and pin ``[offset, offset + size)`` as a device would (``zx_bti_pin``)."""
        self._check_open()
        offset = _args.u64("offset", offset)
        size = _args.u64("size", size)
        if not isinstance(writable, bool):
            raise ZxError(Status.ERR_INVALID_ARGS, "writable must be a bool")
        _args.aligned("offset", offset)
        _args.aligned("size", size)
        if size == 0:
            raise ZxError(Status.ERR_INVALID_ARGS, "cannot pin an empty range")
        self._check_open()
        if writable:
            self._require_write("a writable pin")

        def op() -> PinnedRange:
            _args.in_range("pin", offset, size, self._size())
            self.cow.pin_locked(offset // PAGE_SIZE, (offset + size) // PAGE_SIZE, writable)
            pinned = PinnedRange(self, offset, size, writable)
            self._pins.add(pinned)
            return pinned

        return self._locked_retry(op)

    # ---------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the handle (``zx_handle_close``): unmaps its mappings, unpins its pins.
        Idempotent, as Python's ``close()`` is: a second close does nothing (any other call
        on a closed VMO is ``ERR_BAD_HANDLE``)."""
        if self._closed:
            return
        for m in list(self.mappings):
            m._teardown()
        with self._hier.lock:
            if self._closed:
                return  # closed by another thread meanwhile
            self._closed = True
            # Our pins go with the handle: a pin outliving its VMO could never be unpinned.
            for pinned in list(self._pins):
                if not self._kernel.closed:
                    self.cow.unpin_locked(pinned.offset // PAGE_SIZE,
                                          (pinned.offset + pinned.size) // PAGE_SIZE)
                pinned._released = True
            self._pins.clear()
            if (tracer := self._kernel.state.tracer) is not None:
                tracer.emit(trace.VmoClose, koid=self.koid, node=self.cow.id)
            if not self._kernel.closed:
                self.cow.close_locked()
            if self._parent is not None and not self._parent._closed:
                self._parent._num_children -= 1
            self._parent = None
        self._kernel._unregister(self)

    def __enter__(self) -> Vmo:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self.close()


class PinnedRange:
    """Pages pinned by `Vmo.pin`; `unpin` releases them (``zx_pmt_unpin``)."""

    def __init__(self, vmo: Vmo, offset: int, size: int, writable: bool) -> None:
        self.vmo = vmo
        self.offset = offset
        self.size = size
        self.writable = writable
        self._released = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PinnedRange koid={self.vmo.koid} [{self.offset:#x}, +{self.size:#x})>"

    def unpin(self) -> None:
        with self._lock:
            if self._released:
                raise ZxError(Status.ERR_BAD_HANDLE, "pinned range already unpinned or its VMO closed")
            vmo = self.vmo
            with vmo._hier.lock:
                vmo._check_open()
                vmo.cow.unpin_locked(self.offset // PAGE_SIZE,
                                     (self.offset + self.size) // PAGE_SIZE)
                vmo._pins.discard(self)
                self._released = True

    def __enter__(self) -> PinnedRange:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._released:
            self.unpin()

