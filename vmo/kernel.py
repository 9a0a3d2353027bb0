"""`Kernel`: one physical arena and every object made from it.

Kernels share nothing: each has its own memfd arena, frame table, discardable lists and page
queues, so tests and experiments can run many side by side.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import vmo._args as _args
from vmo.cow_pages import CowPages, DiscardableState, Hierarchy, KernelState, NeedPages
from vmo.errors import Status, ZxError
from vmo.pmm import PAGE_SIZE, PageQueue, PhysicalMemory
from vmo.trace import Trace, TraceEvent, trace_from_environment
from vmo.types import MemoryStats, VmoOptions
from vmo.vm_object import Vmo, installed_mmu

if TYPE_CHECKING:
    from vmo.pager.file_pager import FilePager
    from vmo.pager.user_pager import Pager, PageRequest

DEFAULT_MEMORY = 256 * 2**20


class PagerFactory(Protocol):
    """How `Kernel.pager_create` makes a user pager: the page sources (`vmo.pager`) sit above
    the objects, so `vmo.pager.user_pager` installs its `Pager` class here when it is imported
    (`install_pager_factory`; the package `vmo` imports it) and the kernel never imports it."""

    def __call__(self, kernel: Kernel,
                 handler: Callable[[PageRequest], Any] | None) -> Pager: ...


_pager_factory: PagerFactory | None = None


def install_pager_factory(factory: PagerFactory) -> None:
    """Make ``factory`` what `Kernel.pager_create` calls."""
    global _pager_factory
    _pager_factory = factory


class Kernel:
    """The emulated kernel: ``Kernel(memory=...)`` bytes of physical memory in a memfd."""

    def __init__(self, memory: int = DEFAULT_MEMORY, *,
                 page_request_timeout: float | None = 30.0) -> None:
        memory = _args.u64("memory", memory)
        self.page_request_timeout = _args.timeout("page_request_timeout", page_request_timeout)
        if memory < 2 * PAGE_SIZE:
            raise ZxError(Status.ERR_INVALID_ARGS,
                          f"memory {memory} must hold at least two pages of {PAGE_SIZE} bytes")
        self.pmm = PhysicalMemory(memory)
        self.state = KernelState(self.pmm)
        self._koids = itertools.count(1)
        self._objects_lock = threading.Lock()
        self._vmos: dict[int, weakref.ref[Vmo]] = {}
        self.closed = False
        self.zero_pages_deduped = 0
        # What the kernel's close must close besides its VMOs (held weakly: each closes
        # itself when dropped, or is kept alive by its VMOs).
        self._pagers: weakref.WeakSet[Pager] = weakref.WeakSet()
        self._file_pagers: weakref.WeakSet[FilePager] = weakref.WeakSet()
        # `vmo trace` traces every kernel of the traced program (see `vmo.trace`).
        self._env_trace = trace_from_environment(self.state)

    def __repr__(self) -> str:
        return (f"<Kernel {self.pmm.total_frames * PAGE_SIZE >> 20} MiB, "
                f"{len(self._vmos)} VMOs{' closed' if self.closed else ''}>")

    # ---------------------------------------------------------------- objects

    def _next_koid(self) -> int:
        return next(self._koids)

    def _register(self, vmo: Vmo) -> None:
        with self._objects_lock:
            self._vmos[vmo.koid] = weakref.ref(vmo)

    def _unregister(self, vmo: Vmo) -> None:
        with self._objects_lock:
            self._vmos.pop(vmo.koid, None)

    def live_vmos(self) -> list[Vmo]:
        """Every open VMO of this kernel, oldest first."""
        with self._objects_lock:
            refs = list(self._vmos.values())
        return [v for v in (r() for r in refs) if v is not None and not v.closed]

    def hierarchies(self) -> list[Hierarchy]:
        with self.state.hierarchies_lock:
            return [h for h in self.state.hierarchies if h.root is not None]

    def _check_open(self) -> None:
        if self.closed:
            raise ZxError(Status.ERR_BAD_HANDLE, "the kernel is closed")

    # ---------------------------------------------------------------- syscalls

    def vmo_create(self, size: int, options: VmoOptions = VmoOptions(0)) -> Vmo:  # noqa: B008
        """``zx_vmo_create``: a VMO of ``size`` bytes (rounded up to pages), all zeros."""
        opts = _args.flags("options", options, VmoOptions)
        size = _args.page_size_round("size", size)
        self._check_open()
        if opts & VmoOptions.DISCARDABLE and opts & VmoOptions.RESIZABLE:
            raise ZxError(Status.ERR_NOT_SUPPORTED, "a DISCARDABLE VMO cannot be RESIZABLE")
        hier = self._new_hierarchy()
        cow = CowPages(hier, size // PAGE_SIZE, discardable=bool(opts & VmoOptions.DISCARDABLE))
        hier.root = cow
        return Vmo(self, cow, resizable=bool(opts & VmoOptions.RESIZABLE),
                   discardable=bool(opts & VmoOptions.DISCARDABLE))

    def _new_hierarchy(self) -> Hierarchy:
        hier = Hierarchy(self.state)
        with self.state.hierarchies_lock:
            self.state.hierarchies.add(hier)
        return hier

    def pager_create(self, handler: Callable[[PageRequest], Any] | None = None) -> Pager:
        """``zx_pager_create``: a user pager (see `vmo.pager.Pager`). With ``handler``, each page
        request is passed to ``handler(request)`` on the thread that needs the page."""
        self._check_open()
        if _pager_factory is None:
            raise ZxError(Status.ERR_NOT_SUPPORTED,
                          "no user pager installed (import vmo.pager.user_pager)")
        if handler is not None and not callable(handler):
            raise ZxError(Status.ERR_INVALID_ARGS, "handler must be callable or None")
        pager = _pager_factory(self, handler)
        with self._objects_lock:
            self._pagers.add(pager)
        return pager

    def _own_file_pager(self, fp: FilePager) -> None:
        with self._objects_lock:
            self._file_pagers.add(fp)

    def reclaim_discardable(self, target_pages: int, min_age: float = 0.0) -> int:
        """Discard unlocked discardable VMOs, oldest unlock first, until ``target_pages`` are
        freed. Returns the pages freed."""
        self._check_open()
        target = _args.u64("target_pages", target_pages)
        age = 0.0 if min_age is None else _args.timeout("min_age", min_age)
        if age is None:
            return 0  # nothing can have been unlocked that long ago
        freed = 0
        st = self.state
        with st.discardable_lock:
            candidates = list(st.reclaim_candidates)
        for cow in candidates:
            if freed >= target:
                break
            with cow.hier.lock:
                if cow.discardable_state == DiscardableState.RECLAIMABLE:
                    freed += cow.discard_locked(age)
        return freed

    def reclaim(self, target_pages: int) -> int:
        """Free ``target_pages``: evict clean pager-backed pages least recently used first,
        then discard unlocked discardable VMOs. Returns the pages freed."""
        target = _args.u64("target_pages", target_pages)
        self._check_open()
        freed = self._evict_pager_pages(target)
        if freed < target:
            freed += self.reclaim_discardable(target - freed)
        return freed

    def _evict_pager_pages(self, target: int) -> int:
        """Evict clean pager-backed pages, DONT_NEED-hinted first, then least recently used."""
        freed = 0
        pmm = self.pmm
        for queue in (PageQueue.PAGER_BACKED_INACTIVE, PageQueue.PAGER_BACKED):
            for frame in pmm.lru(queue):
                if freed >= target:
                    return freed
                owner = pmm.owner[frame]
                if owner is None:
                    continue
                with owner.hier.lock:
                    if pmm.owner[frame] is not owner or pmm.queue[frame] != queue:
                        continue  # raced with a change; it is someone else's now
                    if owner.evict_page_locked(frame):
                        freed += 1
        return freed

    def _hint_locked(self, cow: CowPages, start: int, end: int, always_need: bool) -> None:
        target, delta = cow.slice_parent() if cow.is_slice else (cow, 0)
        if target.parent is not None or not target.is_source_preserving():
            return  # hints only concern pages a source can take back
        target.hint_locked(start + delta, end + delta, always_need)

    def memory_stats(self) -> MemoryStats:
        """``ZX_INFO_KMEM_STATS`` in pages."""
        self._check_open()
        pmm = self.pmm
        locked = unlocked = 0
        with self.state.discardable_lock:
            nonrec = list(self.state.non_reclaim_candidates)
            rec = list(self.state.reclaim_candidates)
        for cow in nonrec:
            locked += len(cow.page_list) and cow.page_list.count_pages()
        for cow in rec:
            unlocked += len(cow.page_list) and cow.page_list.count_pages()
        q = pmm.queues
        charged = 0
        for hier in self.hierarchies():
            with hier.lock:
                charged += sum(self._attribution_locked(hier).values())
        return MemoryStats(
            total_pages=pmm.total_frames, free_pages=pmm.free_frames,
            vmo_pages=pmm.used_frames, pinned_pages=len(q[PageQueue.WIRED]),
            pager_backed_pages=len(q[PageQueue.PAGER_BACKED]) + len(q[PageQueue.PAGER_BACKED_DIRTY]),
            pager_backed_dirty_pages=len(q[PageQueue.PAGER_BACKED_DIRTY]),
            discardable_locked_pages=locked, discardable_unlocked_pages=unlocked,
            page_size=PAGE_SIZE, unreachable_pages=pmm.used_frames - charged)

    def trace(self, callback: Callable[[TraceEvent], Any] | None = None) -> Trace:
        """Record what this kernel does (`vmo.trace`): ``with k.trace() as t:`` collects
        events in ``t.events``; ``k.trace(callback)`` calls ``callback(event)`` for each,
        until the returned trace is closed. Several traces may be active at once."""
        self._check_open()
        return Trace(self.state, callback)

    def dedup_zero_pages(self) -> int:
        """Replace committed all-zero pages of anonymous VMOs by zero markers (the kernel's
        zero-page scanner). Returns the pages freed."""
        self._check_open()
        total = 0
        for hier in self.hierarchies():
            with hier.lock:
                assert hier.root is not None
                for node in list(hier.root.walk_subtree()):
                    total += node.scan_for_zero_pages_locked(reclaim=True)
        self.zero_pages_deduped += total
        return total

    # ---------------------------------------------------------------- attribution

    def _attribution_locked(self, hier: Hierarchy) -> dict[CowPages, int]:
        """Committed pages of each live VMO node of one tree, by the seed's rule."""
        out: dict[CowPages, int] = {}
        if hier.root is None:
            return out
        for node in hier.root.walk_subtree():
            if node.paged_ref is not None and not node.hidden:
                count = node.committed_pages_locked()
                if count:
                    out[node] = count
        return out

    # ---------------------------------------------------------------- page sources

    def _wait_for_pages(self, need: NeedPages) -> None:
        """Wait for a page source outside any lock (for callers that hold no handle lock,
        such as the fault handler). Callers that can should register under the hierarchy lock
        instead, as `Vmo` does."""
        source = need.node.page_source
        if source is None:
            raise ZxError(Status.ERR_BAD_STATE, "page request for a VMO without a page source")
        with need.node.hier.lock:
            request = source.register_locked(need)
        source.wait(request, self.page_request_timeout)

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close every VMO and free the arena. Further calls fail with ``ERR_BAD_HANDLE``."""
        if self.closed:
            return
        # File pagers first, while everything works: each flushes its dirty pages to its file
        # and closes its VMO, its pager and its file.
        with self._objects_lock:
            file_pagers = list(self._file_pagers)
        for fp in file_pagers:
            with contextlib.suppress(ZxError, OSError):
                fp.close()
        # Then mappings: unmap them all (waking any thread waiting on a fault with an error)
        # and stop the fault handler, which reads the arena.
        mmu = installed_mmu()
        if mmu is not None:
            mmu.shutdown(self)
        with self._objects_lock:
            pagers = list(self._pagers)
        for pager in pagers:
            with contextlib.suppress(ZxError):
                pager.close()
        for v in reversed(self.live_vmos()):
            with contextlib.suppress(ZxError):
                v.close()
        self.closed = True
        self.pmm.close()
        if self._env_trace is not None:
            self._env_trace.close()
            self._env_trace._writer.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
