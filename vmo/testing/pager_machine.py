"""The oracle state machine with a user pager: the test plays the pager.

`PagerStateMachine` extends `VmoStateMachine` with pager-backed VMOs and their
at-least-on-write children. A handler-mode pager serves READ requests from the test's model of
the backing store (its "disk"), acknowledges DIRTY requests, and fails a request with a chosen
status when a rule arms it. Rules write back dirty ranges (WRITEBACK_BEGIN/END, updating the
disk), evict (``k.reclaim``), resize, zero, commit and detach. Every live pager VMO's content is
compared with the model after every step, and every ``query_dirty_ranges`` answer is checked:
it must cover every page written since its last writeback, only pages that may be un-Clean, and
report as zero only ranges the model reads as zeros.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, consumes, invariant, multiple, rule

from vmo.cow_pages import LOOKUP_MAX_PAGES
from vmo.errors import Status, ZxError
from vmo.page_list import EMPTY, MARKER
from vmo.pager.source import PageRequestCommand
from vmo.pager.user_pager import (
    WRITEBACK_BEGIN_ZERO_RANGE,
    PageRequest,
    PagerOp,
    PagerVmoOptions,
)
from vmo.pmm import PAGE_SIZE
from vmo.testing import strategies as vs
from vmo.testing.machine import Mismatch, VmoStateMachine
from vmo.types import ChildOptions, VmoOp
from vmo.vm_object import Vmo

P = PAGE_SIZE
FAIL_STATUSES = [Status.ERR_IO, Status.ERR_IO_DATA_INTEGRITY, Status.ERR_BAD_STATE,
                 Status.ERR_NO_SPACE, Status.ERR_BUFFER_TOO_SMALL]


@attrs.define(eq=False)
class PNode:
    """Model of a pager-backed root or an at-least-on-write child of one."""

    real: Vmo
    size: int  # bytes
    resizable: bool
    root: PNode | None = None  # None for a root
    # Root only: the backing store, the current content, dirty bookkeeping.
    disk: bytearray = attrs.Factory(bytearray)
    content: bytearray = attrs.Factory(bytearray)
    must_dirty: set[int] = attrs.Factory(set)
    may_dirty: set[int] = attrs.Factory(set)
    # Pages known to be Clean zero markers (supplied wholly past the end of the file): a ZERO
    # leaves them alone (seed: ZeroPagesLocked), so it must not dirty them.
    markers: set[int] = attrs.Factory(set)
    detached: bool = False
    # Child only: where it hangs, and the pages it holds itself.
    target: PNode | None = None
    offset: int = 0  # pages, in the target
    limit: int = 0  # pages of the target it can see
    own: dict[int, bytes] = attrs.Factory(dict)
    closed: bool = False
    children: list[PNode] = attrs.Factory(list)

    @property
    def is_root(self) -> bool:
        return self.root is None

    def the_root(self) -> PNode:
        return self if self.root is None else self.root

    def page(self, p: int) -> bytes:
        """The model's content of page ``p`` (in this node's coordinates)."""
        if self.root is None:
            return bytes(self.content[p * P:(p + 1) * P])
        if p in self.own:
            return self.own[p]
        if p < self.limit and self.target is not None:
            tp = p + self.offset
            if tp * P < self.target.size:
                return self.target.page(tp)
        return bytes(P)

    def read(self) -> bytes:
        return b"".join(self.page(p) for p in range(self.size // P))

    def unknown(self) -> bool:
        """Content the model cannot predict: the pager was detached (its pages are gone)."""
        return self.the_root().detached

    def may_fail(self) -> bool:
        """Calls needing the pager fail with ERR_BAD_STATE once the root is detached. (Not
        when only the root's handle closed: the source closes with the root's node, after
        the last clone, and until then the clones' requests reach the pager; seed: the
        root's ``fbl_recycle``.)"""
        return self.the_root().detached


def _traps_dirty(node: PNode) -> bool:
    source = node.real.cow.page_source
    return source is not None and bool(source.traps_dirty)


def not_a_rule(fn: Any) -> Any:
    """``fn`` as a plain method: shadowing an inherited rule with it switches the rule off."""
    def plain(self: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(self, *args, **kwargs)

    plain.__name__ = fn.__name__
    return plain


class PagerStateMachine(VmoStateMachine):
    pvmos = Bundle("pvmos")
    #: ``p_bad`` makes the calls that must fail (out of range, on a fixed-size VMO, or with
    #: the pager failing the request): counted apart from the rules that do real work.
    error_rules = VmoStateMachine.error_rules | {"p_bad"}

    # The anonymous-VMO rules are proven by `VmoStateMachine` itself; here only a few of them
    # stay (anonymous VMOs share the arena and the page queues with pager-backed ones), so
    # that the pager's rules get most of the steps. A rule is switched off by shadowing it with
    # a plain method (still callable by the rules that remain). No rule here makes a
    # discardable VMO: the pager model's EVICT (`Kernel.reclaim`) would discard it behind the
    # oracle's back.
    for _name in ("set_size", "op_range", "lock_op", "use_maybe_closed", "bad_call", "pin",
                  "unpin", "check_info", "create_discardable", "lock_discardable", "reclaim_aged",
                  "create_child", "cow_step", "reclaim_order", "lock_cycle"):
        if hasattr(VmoStateMachine, _name):
            locals()[_name] = not_a_rule(getattr(VmoStateMachine, _name))
    del _name

    def __init__(self) -> None:
        super().__init__()
        self.pager = self.k.pager_create(self._serve)
        self.pnodes: list[PNode] = []
        self.by_koid: dict[int, PNode] = {}
        self.fail_next: Status | None = None
        self.failed_requests = 0
        self.disk_fd = os.memfd_create("vmo-machine-disk", os.MFD_CLOEXEC)
        self.reads_served = 0
        self.slices: list[Any] = []  # slices kept open by aow_of_slice (closed with the kernel)
        #: Requests the pager should never have seen (checked by `pager_contents_match`).
        self.bad_requests: list[str] = []

    def teardown(self) -> None:
        if self.__dict__.get("_torn_down"):
            return
        try:
            super().teardown()
        finally:
            os.close(self.disk_fd)

    # ------------------------------------------------------------------ the pager's part

    def _serve(self, req: PageRequest) -> None:
        """The handler: supply from the model disk, or fail when a rule armed a failure."""
        if req.command == PageRequestCommand.COMPLETE:
            return
        if self.fail_next is not None:
            status, self.fail_next = self.fail_next, None
            self.failed_requests += 1
            self.pager.op_range(PagerOp.FAIL, req.vmo, req.offset, req.length, status)
            return
        self._count(f"pager:{req.command.name}")
        if req.command == PageRequestCommand.DIRTY and req.length > LOOKUP_MAX_PAGES * P:
            # One lookup covers at most LookupInfo::kMaxPages pages (seed), so a long write
            # asks for DIRTY transitions in batches.
            self.bad_requests.append(f"DIRTY request of {req.length // P} pages at page "
                                     f"{req.offset // P}, more than {LOOKUP_MAX_PAGES}")
        if req.command == PageRequestCommand.DIRTY:
            self.pager.op_range(PagerOp.DIRTY, req.vmo, req.offset, req.length)
            return
        node = self.by_koid[req.vmo.koid]
        data = bytes(node.disk[req.offset:req.offset + req.length])
        self.reads_served += 1
        if self.reads_served % 2:
            # Every other request is served the other way a pager can: straight from a file
            # (`supply_pages_from_fd`), whose end, where the model disk ends, reads as zeros.
            os.ftruncate(self.disk_fd, 0)
            os.pwrite(self.disk_fd, data, 0)
            self._count("pager:READ:from_fd")
            self.pager.supply_pages_from_fd(req.vmo, req.offset, req.length, self.disk_fd, 0)
            # Pages wholly past the end of the file arrive as zero markers.
            first_zero = (req.offset + len(data) + P - 1) // P
            node.markers.update(range(first_zero, (req.offset + req.length) // P))
            return
        data += bytes(req.length - len(data))
        aux = self.k.vmo_create(req.length)
        try:
            aux.write(data)
            self.pager.supply_pages(req.vmo, req.offset, req.length, aux, 0)
        finally:
            aux.close()

    def _call(self, what: str, node: PNode, fn: Any, fail: Status | None = None) -> Any:
        """Run ``fn``; with ``fail`` armed, the call may fail with exactly that status (if it
        needed the pager). Detached hierarchies may also fail with ERR_BAD_STATE."""
        self.fail_next = fail
        self._count(what)
        try:
            result = fn()
        except ZxError as e:
            allowed = {fail} if fail is not None and self.fail_next is None else set()
            if node.may_fail():
                allowed.add(Status.ERR_BAD_STATE)
            if e.status not in allowed:
                raise Mismatch(f"{what} koid {node.real.koid}: unexpected {e}") from e
            self._count(f"{what}:failed")
            if self.rule_outcome is None:
                self.rule_outcome = False
            return e
        finally:
            self.fail_next = None
        if self.rule_outcome is None:
            self.rule_outcome = True
        return result

    def _sync_own(self, node: PNode, first: int, end: int) -> None:
        """After a failed call on a child, pages it forked before failing are its own now."""
        if node.is_root:
            return
        cow = node.real.cow
        for p in range(first, min(end, node.size // P)):
            if p not in node.own and cow.page_list.get(p) != EMPTY:
                node.own[p] = node.page(p)

    # ------------------------------------------------------------------ rules

    @rule(target=pvmos,
          # Half of them longer than one lookup, so that whole writes need DIRTY batches.
          npages=st.one_of(st.integers(1, LOOKUP_MAX_PAGES),
                           st.integers(LOOKUP_MAX_PAGES + 1, LOOKUP_MAX_PAGES + 4)),
          trap=st.booleans(),
          resizable=st.booleans(), seed=vs.seeds, disk_pages=st.integers(0, vs.MAX_PAGES))
    def create_pager_vmo(self, npages: int, trap: bool, resizable: bool, seed: int,
                         disk_pages: int) -> PNode:
        opts = PagerVmoOptions(0)
        if trap:
            opts |= PagerVmoOptions.TRAP_DIRTY
        if resizable:
            opts |= PagerVmoOptions.RESIZABLE
        v = self.pager.create_vmo(npages * P, opts)
        disk = bytearray(vs.payload(seed, min(disk_pages, npages) * P))
        content = bytearray(disk) + bytearray(npages * P - len(disk))
        node = PNode(real=v, size=npages * P, resizable=resizable, disk=disk, content=content)
        self.pnodes.append(node)
        self.by_koid[v.koid] = node
        if self.rule_outcome is None:
            self.rule_outcome = True  # a new pager-backed VMO (no checked call to say so)
        return node

    def _pfit(self, v: PNode, resizable: bool = False) -> PNode:
        """``v`` if it is open (and resizable, if asked), else the next such pager-backed VMO
        by koid (wrapping around), else ``v``: rules whose calls should do real work use it;
        the calls that must fail are ``p_bad``'s. Deterministic, so printed programs replay."""
        def fits(n: PNode) -> bool:
            return not n.closed and (n.resizable or not resizable)

        if fits(v):
            return v
        found = self._next_fitting(v.real.koid, fits)
        if found is not None:
            return found
        return self._fresh_root(v) if resizable else v

    def _next_fitting(self, koid: int, fits: Callable[[PNode], bool],
                      inclusive: bool = False) -> PNode | None:
        """The first pager-backed VMO that ``fits`` with a koid after ``koid`` (or equal to
        it, with ``inclusive``), wrapping around to the first that fits; None if none does."""
        found = [n for n in self.pnodes if fits(n)]
        later = [n for n in found
                 if n.real.koid > koid or (inclusive and n.real.koid == koid)]
        pick = later or found
        return pick[0] if pick else None

    def _fresh_root(self, v: PNode, resizable: bool = True) -> PNode:
        """A new pager-backed VMO of four pages: for rules that need an open root (or a
        resizable or a fixed-size VMO) once the program closed them all. A resizable one has
        two pages on its disk (pages past the disk exist), a fixed-size one all four (slices
        of it reach data)."""
        node = self.create_pager_vmo(npages=4, trap=False, resizable=resizable,
                                     seed=v.real.koid + 1, disk_pages=2 if resizable else 4)
        assert isinstance(node, PNode)
        return node

    def _proot(self, v: PNode, past_disk: bool = False) -> PNode:
        """The root of ``v`` if it is open and not detached (and, with ``past_disk``, has
        pages past the end of its disk), else the next such root by koid, else that root."""
        def fits(n: PNode) -> bool:
            return (n.is_root and not n.closed and not n.detached and n.size >= P
                    and (not past_disk or (len(n.disk) + P - 1) // P * P < n.size))

        root = v.the_root()
        if fits(root):
            return root
        found = self._next_fitting(root.real.koid, fits)
        return found if found is not None else self._fresh_root(v)

    @rule(target=pvmos, v=pvmos, at=vs.aligned_positions(), npages=st.integers(0, vs.MAX_PAGES),
          resizable=st.booleans())
    def aow_child(self, v: PNode, at: tuple[int, int], npages: int, resizable: bool) -> Any:
        v = self._pfit(v)
        if v.closed:
            return multiple()
        offset = vs.resolve(at, v.size)
        opts = ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE
        if resizable:
            opts |= ChildOptions.RESIZABLE
        c = self.expect("pager:aow", None, lambda: v.real.create_child(opts, offset, npages * P))
        assert c is not None
        # A snapshot (hidden parent) of a pager-backed VMO is refused (seed: only at least on
        # write); checked after the real work, which the rule is counted by.
        self.expect("pager:snapshot", Status.ERR_NOT_SUPPORTED,
                    lambda: v.real.create_child(ChildOptions.SNAPSHOT, offset, npages * P))
        limit = 0 if offset >= v.size else min(npages, v.size // P - offset // P)
        return self._hang_clone(v, c, offset // P, limit, npages, resizable)

    @rule(target=pvmos, v=pvmos, slice_at=vs.aligned_positions(),
          slice_pages=st.integers(1, vs.MAX_PAGES), at=vs.aligned_positions(),
          npages=st.integers(0, vs.MAX_PAGES), keep_slice=st.booleans())
    def aow_of_slice(self, v: PNode, slice_at: tuple[int, int], slice_pages: int,
                     at: tuple[int, int], npages: int, keep_slice: bool) -> Any:
        """An at-least-on-write clone of a slice of ``v``: made on the slice's node (seed:
        CreateCloneLocked), it sees no more of ``v`` than the slice does, however far past
        the slice it reaches. The slice is closed at once unless ``keep_slice`` (it owns no
        pages; the clone hangs above it either way)."""
        if v.closed or v.resizable:
            # A slice needs a parent that is not resizable: the next open one (a slice of a
            # resizable VMO is an error the bad-input tests cover), else the error path.
            fixed = self._next_fitting(v.real.koid, lambda n: not n.closed and not n.resizable)
            v = fixed if fixed is not None else self._fresh_root(v, resizable=False)
        sl_off = min(vs.resolve(slice_at, v.size), max(0, v.size - P)) // P
        sl_pages = min(slice_pages, v.size // P - sl_off)
        content_end = len(v.the_root().content.rstrip(b"\0")) // P  # pages with data below
        if sl_off + 1 < content_end:
            # End the slice where the parent still has data past it, for the clone to reach.
            sl_pages = min(sl_pages, content_end - sl_off - 1)
        if sl_pages <= 0:
            return multiple()
        if v.resizable:
            self.expect("pager:slice", Status.ERR_NOT_SUPPORTED,
                        lambda: v.real.create_child(ChildOptions.SLICE, sl_off * P, sl_pages * P))
            return multiple()
        sl = self.expect("pager:slice", None,
                         lambda: v.real.create_child(ChildOptions.SLICE, sl_off * P,
                                                     sl_pages * P))
        assert sl is not None
        offset = vs.resolve(at, sl_pages * P)
        # The clone reaches past the end of the slice (what only a clone made on the slice's
        # own node keeps from seeing: the parent's pages there); clones inside a window are
        # `aow_child`'s.
        npages = max(npages, (sl_pages * P - min(offset, sl_pages * P)) // P + 1)
        c = self.expect("pager:aow", None,
                        lambda: sl.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, offset,
                                                npages * P))
        assert c is not None
        if not keep_slice:
            sl.close()
        else:
            self.slices.append(sl)
        limit = 0 if offset >= sl_pages * P else min(npages, sl_pages - offset // P)
        return self._hang_clone(v, c, sl_off + offset // P, limit, npages, False)

    def _hang_clone(self, v: PNode, c: Any, off: int, limit: int, npages: int,
                    resizable: bool) -> PNode:
        """Model a clone of ``v``'s window from page ``off`` (``limit`` pages of it visible):
        it hangs where the kernel hangs it, at the first ancestor with pages in its window."""
        target = v
        while target.root is not None:
            assert target.target is not None
            if limit > 0 and any(off <= p < off + limit for p in target.own):
                break
            limit = 0 if off >= target.limit else min(limit, target.limit - off)
            off += target.offset
            target = target.target
        node = PNode(real=c, size=npages * P, resizable=resizable, root=v.the_root(),
                     target=target, offset=off, limit=limit)
        target.children.append(node)
        self.pnodes.append(node)
        self.by_koid[c.koid] = node
        if self.stats is not None:
            self.stats["pager:aow_depth"] = max(self.stats["pager:aow_depth"], c.cow.depth())
        return node

    @rule(v=pvmos, at=vs.inside_positions(), length=vs.lengths(), seed=vs.seeds,
          fail=st.just(None))
    def p_write(self, v: PNode, at: tuple[int, int], length: int, seed: int,
                fail: Status | None) -> None:
        """A write inside ``v`` (writes past the end and failing pagers are ``p_bad``'s)."""
        v = self._pfit(v)
        if v.closed:
            return
        offset = vs.resolve_inside(at, v.size)
        self._p_write_at(v, offset, vs.fit_length(length, offset, v.size), seed, fail)

    def _p_write_at(self, v: PNode, offset: int, length: int, seed: int,
                    fail: Status | None) -> None:
        data = vs.payload(seed, length)
        if offset + length > v.size:
            self.expect("pager:write", Status.ERR_OUT_OF_RANGE, lambda: v.real.write(data, offset))
            return
        first, end = offset // P, (offset + length + P - 1) // P
        result = self._call("pager:write", v, lambda: v.real.write(data, offset), fail)
        if isinstance(result, ZxError) or not length:
            if v.is_root:
                v.may_dirty.update(range(first, end))
                v.markers.difference_update(range(first, end))
            self._sync_own(v, first, end)
            return
        self._apply_write(v, offset, data)

    @rule(v=pvmos, at=vs.aligned_positions(), npages=st.integers(1, 4))
    def zero_supplied_markers(self, v: PNode, at: tuple[int, int], npages: int) -> None:
        """Supply pages of ``v``'s root past the end of its disk from the file (they arrive as
        clean zero markers, `supply_pages_from_fd`), then ZERO them: a marker already reads
        as zeros, so the ZERO must leave it clean (seed: ``ZeroPagesLocked``), and the dirty
        ranges must not report it. (The next open root with pages past its disk, if ``v``'s
        root has none.)"""
        root = self._proot(v, past_disk=True)
        if root.closed or root.detached or root.size < P:
            return
        disk_end = (len(root.disk) + P - 1) // P * P
        if disk_end >= root.size:
            return
        offset = min(max(disk_end, vs.resolve(at, root.size) // P * P), root.size - P)
        length = min(npages * P, root.size - offset)
        os.ftruncate(self.disk_fd, 0)  # the file ends before ``offset``: every page a marker
        result = self._call("pager:supply_markers", root,
                            lambda: self.pager.supply_pages_from_fd(root.real, offset, length,
                                                                    self.disk_fd, 0))
        if isinstance(result, ZxError):
            return
        first, end = offset // P, (offset + length) // P
        # Pages that were absent are markers now; present ones kept what they had.
        cow = root.real.cow
        with root.real._hier.lock:
            root.markers.update(p for p in range(first, end)
                                if cow.page_list.get(p) == MARKER and p not in root.must_dirty)
        result = self._call("pager:ZERO", root,
                            lambda: root.real.op_range(VmoOp.ZERO, offset, length))
        if isinstance(result, ZxError):
            root.may_dirty.update(p for p in range(first, end) if p not in root.markers)
            return
        self._apply_zero(root, offset, length)

    @rule(v=pvmos, at=vs.aligned_positions(), npages=st.integers(1, 4),
          write_first=st.booleans(), twice=st.booleans(), seed=vs.seeds)
    def supply_unasked(self, v: PNode, at: tuple[int, int], npages: int, write_first: bool,
                       twice: bool, seed: int) -> None:
        """The pager supplies a range of ``v``'s root that nobody asked for, from the disk: a
        prefetch over a range partly present, or the answer to a request that arrives after
        the page was written (a supply racing with a write: with ``write_first``, a page of
        the range is written just before the supply, whose bytes were read from the disk
        before the write). With ``twice`` the same range is supplied again, every page present
        by then. Present pages keep their content (seed: ``SupplyPagesLocked``); absent pages
        get the disk's bytes, which is what they read as anyway: the content must not
        change. Takes the next open root if ``v``'s is closed, detached or empty."""
        root = self._proot(v)
        offset = min(vs.resolve(at, root.size), root.size - P) // P * P
        length = min(npages * P, root.size - offset)
        stale = bytes(root.disk[offset:offset + length]).ljust(length, b"\0")
        if write_first:
            woff = offset + (seed % (length // P)) * P
            data = vs.payload(seed, P)
            result = self._call("pager:write", root, lambda: root.real.write(data, woff))
            if isinstance(result, ZxError):
                return
            self._apply_write(root, woff, data)
        for _ in range(2 if twice else 1):
            aux = self.k.vmo_create(length)
            try:
                aux.write(stale)
                self._call("pager:supply_unasked", root,
                           lambda a=aux: self.pager.supply_pages(root.real, offset, length, a, 0))
            finally:
                aux.close()

    def _apply_zero(self, v: PNode, offset: int, length: int) -> None:
        """ZERO of a root: the bytes become zeros. A page whose bytes in the range were zeros
        already may stay Clean (Zircon skips a partial page that would read as zero, and a zero
        page supplied as a marker has nothing to change), so only pages whose bytes change
        must be reported dirty; every page of the range may be."""
        first, end = offset // P, (offset + length + P - 1) // P
        for p in range(first, end):
            lo, hi = max(offset, p * P), min(offset + length, (p + 1) * P)
            if any(v.content[lo:hi]):
                v.must_dirty.add(p)
        v.content[offset:offset + length] = bytes(length)
        v.may_dirty.update(p for p in range(first, end) if p not in v.markers)

    def _apply_write(self, v: PNode, offset: int, data: bytes) -> None:
        first, end = offset // P, (offset + len(data) + P - 1) // P
        if v.is_root:
            v.content[offset:offset + len(data)] = data
            v.markers.difference_update(range(first, end))
            v.must_dirty.update(range(first, end))
            v.may_dirty.update(range(first, end))
            return
        for p in range(first, end):
            page = bytearray(v.page(p))
            lo, hi = max(offset, p * P), min(offset + len(data), (p + 1) * P)
            page[lo - p * P:hi - p * P] = data[lo - offset:hi - offset]
            v.own[p] = bytes(page)

    @rule(v=pvmos, at=vs.inside_positions(), length=vs.lengths(), fail=st.just(None))
    def p_read(self, v: PNode, at: tuple[int, int], length: int, fail: Status | None) -> None:
        """A read inside ``v`` (reads past the end and failing pagers are ``p_bad``'s)."""
        v = self._pfit(v)
        if v.closed:
            return
        offset = vs.resolve_inside(at, v.size)
        self._p_read_at(v, offset, vs.fit_length(length, offset, v.size), fail)

    def _p_read_at(self, v: PNode, offset: int, length: int, fail: Status | None) -> None:
        if offset + length > v.size:
            self.expect("pager:read", Status.ERR_OUT_OF_RANGE, lambda: v.real.read(length, offset))
            return
        got = self._call("pager:read", v, lambda: v.real.read(length, offset), fail)
        if isinstance(got, ZxError) or v.unknown():
            return
        want = v.read()[offset:offset + length]
        if got != want:
            raise Mismatch(f"pager read koid {v.real.koid} [{offset:#x}, +{length:#x}) differs")

    @rule(v=pvmos, op=st.sampled_from(["ZERO", "ZERO", "COMMIT", "COMMIT", "DONT_NEED",
                                       "ALWAYS_NEED", "PREFETCH", "EVICT", "EVICT", "DETACH"]),
          at=vs.inside_positions(), length=vs.lengths(), fail=st.just(None))
    def p_op(self, v: PNode, op: str, at: tuple[int, int], length: int,
             fail: Status | None) -> None:
        """A VMO op on a pager-backed VMO, or (EVICT) a kernel reclaim, or (DETACH) a detach.
        Inside ``v``: ops past the end, DECOMMIT (refused) and failing pagers are ``p_bad``'s."""
        if op == "EVICT":
            self.expect("pager:reclaim", None, lambda: self.k.reclaim(max(length, 0) or 1 << 20))
            return
        v = self._pfit(v)
        if v.closed:
            return
        if op != "DETACH":
            offset = vs.resolve_inside(at, v.size)
            self._p_op_at(v, op, offset, vs.fit_length(length, offset, v.size), fail)
            return
        self._p_op_at(v, op, 0, 0, fail)

    def _p_op_at(self, v: PNode, op: str, offset: int, length: int,
                 fail: Status | None) -> None:
        if op == "DETACH":
            if v.is_root and v.size // P % 3 == 0:  # rare: a detached VMO's content is lost
                self.expect("pager:detach", None, lambda: self.pager.detach_vmo(v.real))
                v.detached = True
            return
        call = lambda: v.real.op_range(VmoOp[op], offset, length)  # noqa: E731
        if op == "DECOMMIT":
            # Trimmed to the VMO first; then a pager-backed VMO or a clone refuses before
            # alignment is looked at (seed: the page source is checked first).
            if offset > v.size:
                self.expect("pager:DECOMMIT", Status.ERR_OUT_OF_RANGE, call)
            elif min(length, v.size - offset):
                self.expect("pager:DECOMMIT", Status.ERR_NOT_SUPPORTED, call)
            return
        if offset + length > v.size:
            self.expect(f"pager:{op}", Status.ERR_OUT_OF_RANGE, call)
            return
        first, end = offset // P, (offset + length + P - 1) // P
        if op == "COMMIT" and v.is_root:
            # A page supplied as a zero marker is forked into a real page by COMMIT, and that
            # page starts Dirty (the seed's LookupCursor: "replace a zero page marker in a
            # pager-backed VMO ... mark it Dirty"). Markers only ever hold zeros.
            v.may_dirty.update(p for p in range(first, end) if not any(v.content[p * P:(p + 1) * P]))
            v.markers.difference_update(range(first, end))
        result = self._call(f"pager:{op}", v, call, fail)
        if isinstance(result, ZxError) or length == 0:
            if v.is_root and op == "ZERO":
                v.may_dirty.update(p for p in range(first, end) if p not in v.markers)
            self._sync_own(v, first, end)
            return
        if op == "ZERO":
            if v.is_root:
                self._apply_zero(v, offset, length)
            else:
                self._zero_child(v, offset, length)
        elif op == "COMMIT" and not v.is_root:
            for p in range(first, end):
                v.own.setdefault(p, v.page(p))

    def _zero_child(self, v: PNode, offset: int, length: int) -> None:
        end_byte = offset + length
        first_full, last_full = -(-offset // P), end_byte // P
        if first_full >= last_full:
            self._apply_write(v, offset, bytes(length))
            return
        if offset % P:
            self._apply_write(v, offset, bytes(first_full * P - offset))
        if end_byte % P:
            self._apply_write(v, last_full * P, bytes(end_byte - last_full * P))
        # Zeroing through the end of the parent window just cuts the window there.
        if first_full < v.limit <= last_full:
            v.limit = first_full
        for p in range(first_full, last_full):
            if p < v.limit:
                v.own[p] = bytes(P)
            else:
                v.own.pop(p, None)

    @rule(v=pvmos, npages=st.integers(0, vs.MAX_PAGES + 2))
    def p_resize(self, v: PNode, npages: int) -> None:
        """Resize a resizable pager-backed VMO (or clone); a fixed-size one refuses, which
        ``p_bad`` checks."""
        v = self._pfit(v, resizable=True)
        self._p_resize_to(v, npages)

    def _p_resize_to(self, v: PNode, npages: int) -> None:
        if v.closed:
            return
        if v.is_root and v.resizable and not v.detached:
            self.pager.query_vmo_stats(v.real, reset=True)
        if not v.resizable:
            self.expect("pager:resize", Status.ERR_UNAVAILABLE, lambda: v.real.set_size(npages * P))
            return
        result = self._call("pager:resize", v, lambda: v.real.set_size(npages * P))
        if isinstance(result, ZxError):
            return
        new = npages * P
        if v.is_root and not v.detached and not self.pager.query_vmo_stats(v.real).modified:
            raise Mismatch(f"resize of pager VMO koid {v.real.koid} did not mark it modified "
                           "(seed: any successful resize does, even to the same size)")
        if v.is_root:
            if new < v.size:
                del v.content[new:]
                v.must_dirty = {p for p in v.must_dirty if p < npages}
                v.may_dirty = {p for p in v.may_dirty if p < npages}
                v.markers = {p for p in v.markers if p < npages}
                for c in v.children:
                    c.limit = 0 if npages < c.offset else min(c.limit, npages - c.offset)
            else:
                v.content.extend(bytes(new - v.size))
                # Pages past the old end are zero and un-Clean until written back.
                v.must_dirty.update(range(v.size // P, npages))
                v.may_dirty.update(range(v.size // P, npages))
        elif new < v.size:
            v.own = {p: d for p, d in v.own.items() if p < npages}
            v.limit = min(v.limit, npages)
            for c in v.children:
                c.limit = 0 if npages < c.offset else min(c.limit, npages - c.offset)
        v.size = new

    @rule(v=pvmos, seed=vs.seeds)
    def rewrite_root(self, v: PNode, seed: int) -> None:
        """Write the whole of ``v``'s root in one call (a file rewritten in place): with
        dirty trapping and more pages than one lookup covers, the pager must see DIRTY
        requests of at most ``LookupInfo::kMaxPages`` pages each."""
        root = self._proot(v)
        if root.closed or root.detached:
            return
        # Prefer, by koid from ``root`` on, an open root that traps dirtying and is longer
        # than one lookup (the case the batching shows in).
        wanted = self._next_fitting(
            root.real.koid, lambda n: (n.is_root and not n.closed and not n.detached
                                       and n.size > LOOKUP_MAX_PAGES * P and _traps_dirty(n)),
            inclusive=True)
        if wanted is not None:
            root = wanted
        self._p_write_at(root, 0, root.size, seed, None)

    @rule(v=pvmos, kind=st.sampled_from(["read_past_end", "write_past_end", "op_past_end",
                                         "decommit", "resize_fixed", "read_fails",
                                         "write_fails", "op_fails", "supply_bad_aux"]),
          op=st.sampled_from(["ZERO", "COMMIT", "DONT_NEED", "ALWAYS_NEED", "PREFETCH"]),
          at=vs.positions(), length=vs.lengths(), seed=vs.seeds,
          fail=st.sampled_from(FAIL_STATUSES))
    def p_bad(self, v: PNode, kind: str, op: str, at: tuple[int, int], length: int,
              seed: int, fail: Status) -> None:
        """The calls on pager-backed VMOs that must fail: reads, writes and ops that reach
        past the end (ERR_OUT_OF_RANGE), DECOMMIT (ERR_NOT_SUPPORTED: the pages are the
        pager's), a resize of a fixed-size VMO (ERR_UNAVAILABLE), and reads, writes and ops
        whose page requests the pager fails with ``fail`` (the call fails with it, unless no
        request was needed), and a supply from an aux VMO that shares its pages (a clone, or
        one with a child: ERR_BAD_STATE, and nothing moves)."""
        if kind == "supply_bad_aux":
            self._supply_from_bad_aux(v, seed)
            return
        if kind == "resize_fixed":
            fixed = [n for n in self.pnodes if not n.closed and not n.resizable]
            if fixed:
                self._p_resize_to(fixed[seed % len(fixed)], vs.MAX_PAGES)
            return
        v = self._pfit(v)
        if v.closed:
            return
        if kind.endswith("_past_end"):
            offset = vs.resolve(at, v.size)
            length = max(vs.resolve_length(length, offset, v.size), v.size - offset + 1)
        else:
            offset = vs.resolve_inside(at, v.size)
            length = vs.fit_length(length, offset, v.size)
        if kind in ("read_past_end", "read_fails"):
            self._p_read_at(v, offset, length, None if kind == "read_past_end" else fail)
        elif kind in ("write_past_end", "write_fails"):
            self._p_write_at(v, offset, length, seed,
                             None if kind == "write_past_end" else fail)
        elif kind == "decommit":
            self._p_op_at(v, "DECOMMIT", offset, length, None)
        else:
            self._p_op_at(v, op, offset, length, None if kind == "op_past_end" else fail)

    def _supply_from_bad_aux(self, v: PNode, seed: int) -> None:
        root = self._proot(v)
        if root.closed or root.detached:
            return
        length = min(root.size, 2 * P)
        aux = self.k.vmo_create(length)
        others: list[Any] = []
        try:
            aux.write(vs.payload(seed, length))
            # (An at-least-on-write clone of an anonymous VMO is a snapshot: its node goes
            # below a hidden parent too.)
            kind = seed % 4
            if kind <= 1:  # aux has a slice
                others.append(aux.create_child(ChildOptions.SLICE, 0, length))
            elif kind == 2:  # aux has a snapshot child (its node is below a hidden parent)
                others.append(aux.create_child(ChildOptions.SNAPSHOT, 0, length))
            else:  # aux is a clone
                others.append(aux)
                aux = aux.create_child(ChildOptions.SNAPSHOT, 0, length)
            before = [(x, x.read(length)) for x in (aux, *others)]
            self.expect("pager:supply_bad_aux", Status.ERR_BAD_STATE,
                        lambda: self.pager.supply_pages(root.real, 0, length, aux, 0))
            for x, data in before:
                if x.read(length) != data:
                    raise Mismatch(f"a refused supply changed aux-related VMO koid {x.koid}")
        finally:
            aux.close()
            for x in others:
                x.close()

    @rule(v=consumes(pvmos))
    def p_close(self, v: PNode) -> None:
        if v.closed:
            return
        self.expect("pager:close", None, v.real.close)
        v.closed = True

    @rule(v=pvmos, prefix=st.integers(1, 8))
    def writeback(self, v: PNode, prefix: int) -> None:
        """Write back the first ``prefix`` dirty ranges of ``v``'s root (or of the next root
        that is open), in order, the way a filesystem does."""
        v = self._proot(v)
        if v.closed or not v.is_root or v.detached:
            return
        ranges = self.expect("pager:query", None,
                             lambda: self.pager.query_dirty_ranges(v.real, 0, v.size))
        assert ranges is not None
        self._check_dirty_ranges(v, ranges)
        for r in ranges[:prefix]:
            zero = bool(r.options)
            self.pager.op_range(PagerOp.WRITEBACK_BEGIN, v.real, r.offset, r.length,
                                WRITEBACK_BEGIN_ZERO_RANGE if zero else 0)
            data = bytes(r.length) if zero else v.real.read(r.length, r.offset)
            if len(v.disk) < r.offset + r.length:
                v.disk.extend(bytes(r.offset + r.length - len(v.disk)))
            v.disk[r.offset:r.offset + r.length] = data
            self.pager.op_range(PagerOp.WRITEBACK_END, v.real, r.offset, r.length)
            pages = range(r.offset // P, (r.offset + r.length) // P)
            v.must_dirty.difference_update(pages)
            v.may_dirty.difference_update(pages)
            self._count("pager:writeback")

    # ------------------------------------------------------------------ checks

    def _check_dirty_ranges(self, v: PNode, ranges: list[Any]) -> None:
        reported: set[int] = set()
        last_end = -1
        for r in ranges:
            if r.offset < last_end or r.length <= 0:
                raise Mismatch(f"dirty ranges overlap or are empty: {ranges}")
            last_end = r.offset + r.length
            pages = set(range(r.offset // P, (r.offset + r.length) // P))
            reported |= pages
            if r.options and any(v.content[r.offset:r.offset + r.length]):
                raise Mismatch(f"range {r} reported zero but the model has data there")
        if not v.must_dirty <= reported:
            raise Mismatch(f"written pages {sorted(v.must_dirty - reported)} not reported dirty")
        if not reported <= v.may_dirty:
            raise Mismatch(f"pages {sorted(reported - v.may_dirty)} reported dirty but never "
                           "written since their last writeback")

    @invariant()
    def pager_contents_match(self) -> None:
        if self.bad_requests:
            raise Mismatch("; ".join(self.bad_requests))
        for node in self.pnodes:
            if node.closed or node.unknown():
                continue
            got = self._call("pager:check", node, lambda n=node: n.real.read(n.size, 0))
            if isinstance(got, ZxError):
                continue
            if got != node.read():
                raise Mismatch(f"pager VMO koid {node.real.koid} content differs from the model")
            if node.is_root:
                ranges = self.pager.query_dirty_ranges(node.real, 0, node.size)
                self._check_dirty_ranges(node, ranges)
