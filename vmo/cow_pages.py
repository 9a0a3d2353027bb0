"""The copy-on-write hierarchy: one `CowPages` is one node of a clone tree (Zircon's VmCowPages).

A VMO's content is the page list of its node, and where that list is empty, what its parent
shows at ``offset + parent_offset`` (while ``offset < parent_limit``), and so on up the tree.

Snapshot clones. Cloning node ``N`` turns ``N`` into a *hidden* node with two children: the
*left* child takes over ``N``'s identity (its VMO handle, its other children) and sees all of
``N``; the *right* child is the new clone and sees ``[offset, offset + size)`` of ``N``. Nobody
writes to a hidden node again: its pages are the frozen, shared state of the moment of the clone.
Writing to a leaf forks the page it sees into it (`_clone_cow_page_locked`), walking from the
hidden node that owns the page down to the leaf. At each hidden node on the way the page either
*migrates* (when only the side we walk to can still see it) or is *copied*, and then the hidden
node's copy gets the *split bit* of the side that forked it (left or right). A page with a split
bit is seen by one side only; a page with both would be seen by no one and is freed instead.

Zero markers in a page list mean "zero here, do not look at the parent". ``parent_start_limit``
and ``parent_limit`` bound the window of the parent a child can see; shrinking a child, zeroing
its tail, or merging release parent pages that nobody can see any more
(`_release_cow_parent_pages_locked`).

Closing one child of a hidden node merges the hidden node into the remaining child
(`_merge_content_with_child_locked`): the hidden node's pages that the child can see move into
it (a page the child already covers is dropped), and the hidden node leaves the tree.

Slices are windows onto their (non-slice) parent: they own no pages and forward every
operation to it. At-least-on-write clones of pager-backed VMOs hang below the nearest ancestor
that has pages in their range, without hidden nodes; of anonymous VMOs they are snapshots.

Offsets and sizes in this module are page indices and page counts, never bytes. Every method
whose name ends in ``_locked`` expects the hierarchy lock held.
"""

from __future__ import annotations

import enum
import errno
import itertools
import os
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import vmo.trace as trace
from vmo.errors import Status, ZxError
from vmo.page_list import EMPTY, MARKER, NODE_MASK, NODE_SHIFT, PageList
from vmo.pmm import (
    PAGE_SIZE,
    SPLIT_LEFT,
    SPLIT_RIGHT,
    ZERO_FRAME,
    DirtyState,
    FrameState,
    PageQueue,
    PhysicalMemory,
    consecutive,
)

if TYPE_CHECKING:
    from vmo.pager.source import AnonymousPageSource, PageSource
    from vmo.trace import Tracer

# A slot value returned by `resolve_range` where a page source must supply content.
ABSENT = -2
# supply_zero_offset of a VMO without a content-preserving page source: never reached.
NO_SUPPLY_ZERO = 1 << 62
# Pages handled per step by range operations that build per-page lists.
COMMIT_CHUNK = 4096
# The longest READ request sent to a source (see the README on request sizes).
MAX_REQUEST_PAGES = 4096
# The most pages one lookup covers, and so the longest DIRTY request (seed:
# ``LookupInfo::kMaxPages``, the cap callers put on ``max_out_pages``).
LOOKUP_MAX_PAGES = 16
# The most pages one supply may carry: each becomes a page-list slot (a frame or a marker).
MAX_SUPPLY_PAGES = 1 << 24

_node_ids = itertools.count(1)


class DiscardableState(enum.IntEnum):
    UNSET = 0  # not discardable, or discardable and never locked
    RECLAIMABLE = 1  # unlocked: a reclaim candidate
    UNRECLAIMABLE = 2  # locked
    DISCARDED = 3


class RangeChangeOp(enum.IntEnum):
    """What mappings of a range must do (seed: ``RangeChangeOp``)."""

    UNMAP = 0  # the content changed: drop mapped copies
    REMOVE_WRITE = 1  # the pages became shared: mappings must fault before writing


class NeedPages(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the lock when a page source must act; the object layer waits and retries.

    ``source``/``offset``/``length`` (pages) say what to request; ``dirty`` requests a DIRTY
    transition rather than content.
    """

    def __init__(self, node: CowPages, offset: int, length: int, dirty: bool = False) -> None:
        super().__init__(node, offset, length, dirty)
        self.node = node
        self.offset = offset
        self.length = length
        self.dirty = dirty


class Hierarchy:
    """State shared by every node of one clone tree (Zircon's ``VmHierarchyState``).

    Its lock is the one lock of the tree: every public call on any VMO of the tree takes it.
    """

    def __init__(self, kernel_state: KernelState) -> None:
        self.lock = threading.RLock()
        self.kernel = kernel_state
        self.pmm = kernel_state.pmm
        self.generation = 0
        self.root: CowPages | None = None


class KernelState:
    """The parts of a kernel the hierarchy layer needs: memory and the discardable lists.

    ``range_change`` listeners (mappings) are told when what a node shows changes.
    """

    def __init__(self, pmm: PhysicalMemory) -> None:
        self.pmm = pmm
        # Discardable lists. Lock order: a hierarchy lock may be held while taking this one,
        # never the reverse. Dict order is list order: the oldest unlock comes first.
        self.discardable_lock = threading.Lock()
        self.reclaim_candidates: dict[CowPages, None] = {}
        self.non_reclaim_candidates: dict[CowPages, None] = {}
        self.range_change_listeners: list[Callable[[CowPages, int, int, RangeChangeOp], None]] = []
        self.hierarchies: set[Hierarchy] = set()
        self.hierarchies_lock = threading.Lock()
        self.eviction_count = 0
        # The event trace (`vmo.trace`): None unless a trace is active. Every hook tests it
        # and nothing else, so tracing costs one attribute read when off.
        self.tracer: Tracer | None = None


class CowPages:
    """One node of a copy-on-write tree. See the module docstring."""

    def __init__(
        self,
        hier: Hierarchy,
        size: int,
        *,
        is_slice: bool = False,
        page_source: PageSource | None = None,
        discardable: bool = False,
    ) -> None:
        self.hier = hier
        self.pmm = hier.pmm
        self.id = next(_node_ids)
        self.size = size
        self.parent: CowPages | None = None
        # Hidden nodes: exactly [left, right]. Visible nodes: slices and at-least-on-write
        # children, newest first.
        self.children: list[CowPages] = []
        self.parent_offset = 0
        self.parent_limit = 0
        self.parent_start_limit = 0
        self.root_parent_offset = 0
        self.hidden = False
        self.is_slice = is_slice
        self.page_list = PageList()
        self.partial_cow_release = False
        # Validator bookkeeping, not in the seed, decides nothing: this node took the place of
        # a hidden parent that did a partial release (or had itself taken such a place). A
        # merge does not carry ``partial_cow_release`` down, so the window this node inherits
        # may still cover pages above it that none of its leaves sees, with their split bits
        # clear; the state machines' exact split-bit check accepts that only here.
        self.merged_partial_release = False
        self.page_source = page_source
        self.supply_zero_offset = NO_SUPPLY_ZERO
        self.awaiting_clean_zero_range_end = 0
        self.discardable = discardable
        self.discardable_state = DiscardableState.UNSET
        self.lock_count = 0
        self.last_unlock_time = 0.0
        self.pinned_pages = 0
        # The VMO handle object this node currently stands for (None for hidden nodes and for
        # nodes whose VMO was closed while children still need them).
        self.paged_ref: Any = None
        self.eviction_events = 0
        self.modified = False  # for pager stats: written since the last query with reset
        # Whose VMO the pages of this node are charged to (seed: ``page_attribution_user_id_``):
        # the koid of the VMO a visible node stands for; a hidden node keeps the id of the VMO
        # it was cloned from, re-pointed when that VMO closes (`_remove_child_locked`).
        self.page_attribution_user_id = 0

    def __repr__(self) -> str:
        kind = "hidden" if self.hidden else ("slice" if self.is_slice else "node")
        return f"<CowPages {kind} #{self.id} size={self.size}p>"

    # ---------------------------------------------------------------- tree shape

    @property
    def left(self) -> CowPages:
        return self.children[0]

    @property
    def right(self) -> CowPages:
        return self.children[1]

    def is_left_child(self) -> bool:
        assert self.parent is not None
        return self.parent.children[0] is self

    def root(self) -> CowPages:
        cur = self
        while cur.parent is not None:
            cur = cur.parent
        return cur

    def root_page_source(self) -> PageSource | None:
        return self.root().page_source

    def is_source_preserving(self) -> bool:
        """Backed directly by a page source that preserves content (a user pager)."""
        return self.page_source is not None and self.page_source.preserves_content

    def is_pager_backed(self) -> bool:
        return self.root_page_source() is not None

    def sees_parent(self, off: int) -> bool:
        return self.parent is not None and self.parent_start_limit <= off < self.parent_limit

    def walk_subtree(self) -> Iterator[CowPages]:
        stack = [self]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(reversed(n.children))

    def depth(self) -> int:
        d, cur = 0, self
        while cur.parent is not None:
            d, cur = d + 1, cur.parent
        return d

    def _add_child_locked(self, child: CowPages, offset: int, limit: int) -> None:
        child.root_parent_offset = self.root_parent_offset + offset
        child.parent_offset = offset
        child.parent_limit = limit
        child.parent_start_limit = 0
        child.parent = self
        self.children.insert(0, child)

    def slice_parent(self) -> tuple[CowPages, int]:
        """The non-slice node a slice forwards to, and the slice's offset in it."""
        node, off = self, 0
        while node.is_slice:
            assert node.parent is not None
            off += node.parent_offset
            node = node.parent
        return node, off

    # ---------------------------------------------------------------- frame bookkeeping

    def _place_locked(self, off: int, frame: int) -> int:
        """Put ``frame`` at ``off`` (the slot must not hold a page). Returns the old slot."""
        old = self.page_list.set(off, frame)
        assert old <= 0, f"overwriting page {old} at {off} of {self!r}"
        pmm = self.pmm
        pmm.set_owner(frame, self, off)
        pmm.split[frame] = 0
        if self.page_source is None:
            # A page of an anonymous source's root that migrates into a child leaves the dirty
            # tracking of the root behind.
            pmm.dirty[frame] = DirtyState.UNTRACKED
        pmm.set_queue(frame, self._queue_for(pmm.dirty[frame]))
        return old

    def _queue_for(self, dirty: int) -> PageQueue:
        """The page queue an unpinned page of this node belongs in, given its dirty state."""
        if self.page_source is None:
            return PageQueue.ANONYMOUS
        if dirty in (DirtyState.CLEAN, DirtyState.UNTRACKED):
            return PageQueue.PAGER_BACKED
        return PageQueue.PAGER_BACKED_DIRTY

    def _place_run_locked(self, start: int, frames: list[int], dirty: int) -> None:
        """`_place_locked` for consecutive empty slots, in bulk (node slices, column slices)."""
        self.page_list.fill_empty_run(start, frames)
        self.pmm.place_many(frames, self, start, self._queue_for(dirty), dirty)

    def _free_frames_locked(self, frames: list[int]) -> None:
        if frames:
            self.pmm.free(frames)
            self.hier.generation += 1

    # Frames an operation allocated up front for this node to draw from (seed: the
    # ``alloc_list`` that CommitRangeLocked fills and AllocateCopyPage takes from first).
    alloc_list: list[int] | None = None

    def _alloc_locked(self, count: int, *, zero: bool) -> list[int]:
        pool = self.alloc_list
        if pool and count <= len(pool):
            frames = pool[len(pool) - count:]
            del pool[len(pool) - count:]
            if zero:
                for f in frames:
                    self.pmm.zero_frame(f)
            return frames
        return self.pmm.alloc(count, zero=zero)

    # ---------------------------------------------------------------- mappings

    def range_change_locked(self, start: int, end: int, op: RangeChangeOp) -> None:
        """Tell mappings of this node and every descendant that sees ``[start, end)``.

        Seed: ``RangeChangeUpdateLocked`` and ``RangeChangeUpdateFromParentLocked``.
        """
        listeners = self.hier.kernel.range_change_listeners
        if not listeners or end <= start:
            return
        stack: list[tuple[CowPages, int, int]] = [(self, start, end)]
        while stack:
            node, s, e = stack.pop()
            if not node.hidden:
                for listener in listeners:
                    listener(node, s, e, op)
            for child in node.children:
                cs = max(s - child.parent_offset, child.parent_start_limit)
                ce = min(e - child.parent_offset, child.parent_limit)
                if child.is_slice:
                    cs = max(s - child.parent_offset, 0)
                    ce = min(e - child.parent_offset, child.size)
                if cs < ce:
                    stack.append((child, cs, ce))

    # ---------------------------------------------------------------- clones

    def create_clone_locked(self, snapshot: bool, offset: int, size: int) -> CowPages:
        """A snapshot (hidden parent) or at-least-on-write (hung below) clone of this node.

        Argument checks (alignment, kinds allowed) are the object layer's; here only the
        states that make the clone impossible are refused.
        """
        assert not self.hidden and not (snapshot and self.is_slice)
        if snapshot:
            if self.is_pager_backed() and not self.acts_anonymous():
                raise ZxError(Status.ERR_NOT_SUPPORTED, "cannot snapshot a pager-backed VMO")
            # In a hierarchy of an anonymous source every at-least-on-write clone is a
            # snapshot too, so a visible node's parent is the source root or hidden.
            assert self.parent is None or self.parent.hidden
            if self.pinned_pages:
                raise ZxError(Status.ERR_BAD_STATE,
                              f"VMO has {self.pinned_pages} pinned pages; unpin before a snapshot")
        child_limit = 0 if offset >= self.size else min(size, self.size - offset)
        self.range_change_locked(offset, offset + size, RangeChangeOp.REMOVE_WRITE)
        hier = self.hier
        if snapshot:
            left = CowPages(hier, self.size)
            right = CowPages(hier, size)
            # The left child becomes this node in all but name: it takes our VMO handle and
            # children, and sees all of us.
            for c in self.children:
                c.parent = left
            left.children = self.children
            self.children = []
            left.eviction_events = self.eviction_events
            left.page_attribution_user_id = self.page_attribution_user_id
            self._add_child_locked(left, 0, self.size)
            self._add_child_locked(right, offset, child_limit)
            self.children = [left, right]
            if self.paged_ref is not None:
                left.paged_ref = self.paged_ref
                self.paged_ref.cow = left
                self.paged_ref = None
            self.hidden = True
            hier.generation += 1
            return right
        # At least on write: hang the clone at the first ancestor that has pages in its window,
        # keeping its limits no wider than what it could see from here. A slice has no pages
        # and its limit is its size, so a clone of a slice sees no more than the slice.
        clone = CowPages(hier, size)
        cur, off = self, offset
        while cur.parent is not None:
            if child_limit > 0 and cur.page_list.any_in_range(off, off + child_limit):
                break
            child_limit = 0 if off >= cur.parent_limit else min(child_limit,
                                                                cur.parent_limit - off)
            off += cur.parent_offset
            cur = cur.parent
        cur._add_child_locked(clone, off, child_limit)
        hier.generation += 1
        return clone

    def create_slice_locked(self, offset: int, size: int) -> CowPages:
        if self.is_slice:
            assert self.parent is not None
            return self.parent.create_slice_locked(offset + self.parent_offset, size)
        sl = CowPages(self.hier, size, is_slice=True)
        self._add_child_locked(sl, offset, size)
        return sl

    # ---------------------------------------------------------------- lookups

    def find_initial_content_locked(self, off: int) -> tuple[CowPages, int, int]:
        """Walk up from ``off`` to the first node with a page or marker there.

        Returns ``(owner, owner_offset, slot)``; ``slot`` is EMPTY when no ancestor has content,
        and then ``owner`` is the node that would provide it (seed:
        ``FindInitialPageContentLocked``).
        """
        cur, cur_off = self, off
        while cur_off < cur.parent_limit:
            parent = cur.parent
            assert parent is not None
            p_off = cur.parent_offset + cur_off
            if p_off >= parent.size:
                break
            cur, cur_off = parent, p_off
            # The slot, looked up inline: this loop runs once per level of the tree.
            node = cur.page_list._nodes.get(cur_off >> NODE_SHIFT)
            if node is not None:
                v = node[cur_off & NODE_MASK]
                if v != EMPTY:
                    return cur, cur_off, v
        return cur, cur_off, EMPTY

    def resolve_range(self, start: int, end: int) -> tuple[list[int], list[int]]:
        """The frame this node shows at each page of ``[start, end)``.

        Returns ``(frames, absent)``: ``frames[i]`` is a frame number, ``ZERO_FRAME`` for zeros,
        or ``ABSENT`` where the root's page source must supply the page; ``absent`` lists the
        root offsets of the ABSENT pages. Walks the ancestors level by level over the whole
        range at once, so a deep chain costs one pass per level, not one walk per page.
        """
        if end - start == 1:
            # One page (a fault, a small read): walk up slot by slot, no lists per level.
            v = self.page_list.get(start)
            if v == EMPTY:
                owner, owner_off, v = self.find_initial_content_locked(start)
                if (v == EMPTY and owner.parent is None and owner.is_source_preserving()
                        and owner_off < owner.supply_zero_offset):
                    return [ABSENT], [owner_off]
            return [v if v > 0 else ZERO_FRAME], []
        out = self.page_list.dense(start, end)
        if EMPTY not in out:
            # Every page is here (the common case once content is loaded): one C-level scan
            # for markers instead of a walk of the ancestors.
            if MARKER in out:
                out = [ZERO_FRAME if v == MARKER else v for v in out]
            return out, []
        n = end - start
        if out.count(EMPTY) == n:
            pending = list(range(n))
        else:
            pending = [i for i, v in enumerate(out) if v == EMPTY]
        cur, delta = self, start  # cur offset of index i is i + delta
        while pending and cur.parent is not None:
            parent = cur.parent
            lim = cur.parent_limit
            pdelta = delta + cur.parent_offset
            psize = parent.size
            pending = [i for i in pending if i + delta < lim and i + pdelta < psize]
            if not pending:
                break
            lo, hi = pending[0] + pdelta, pending[-1] + pdelta + 1
            dense = parent.page_list.dense(lo, hi)
            still = []
            for i in pending:
                v = dense[i + pdelta - lo]
                if v == EMPTY:
                    still.append(i)
                else:
                    out[i] = v
            pending = still
            cur, delta = parent, pdelta
        absent: list[int] = []
        if pending and cur.parent is None and cur.is_source_preserving():
            # Pending offsets below the supply-zero offset are the source's to supply.
            cut = bisect_left(pending, cur.supply_zero_offset - delta)
            if cut == n:  # all of them (a cold range of a pager-backed VMO)
                out = [ABSENT] * n
                absent = list(range(delta, delta + n))
            else:
                for i in pending[:cut]:
                    out[i] = ABSENT
                    absent.append(i + delta)
        if min(out) <= 0:
            out = [v if v > 0 or v == ABSENT else ZERO_FRAME for v in out]
        return out, absent

    def lookup_for_read_locked(self, start: int, count: int) -> list[int]:
        """Frames to show for ``[start, start + count)`` (ZERO_FRAME for zeros), for mappings.

        Forwards slices; raises ``ZxError(ERR_NOT_FOUND)`` for a discarded VMO and `NeedPages`
        when a page source must supply a page first.
        """
        if self.is_slice:
            parent, poff = self.slice_parent()
            return parent.lookup_for_read_locked(start + poff, count)
        self._check_readable_locked()
        frames, absent = self.resolve_range(start, start + count)
        if absent:
            raise NeedPages(self.root(), absent[0], _run_length(absent))
        # The hierarchy knows its root: no walk up the levels on every read.
        root = self.hier.root
        if root is not None and root.page_source is not None:
            self.pmm.touch_many(frames)
        return frames

    def _check_readable_locked(self) -> None:
        node = self.slice_parent()[0] if self.is_slice else self
        if node.discardable_state == DiscardableState.DISCARDED:
            raise ZxError(Status.ERR_NOT_FOUND, "VMO was discarded and not locked since")

    def lookup_for_write_locked(self, off: int, want: int = 1, *, dirty: bool = True,
                                dirty_want: int | None = None) -> int:
        """A frame at ``off`` this node owns exclusively, forking or allocating it if needed.

        Seed: the write path of ``LookupPagesLocked``. Raises `NeedPages` when the root's page
        source must supply or dirty the page first; a read request covers up to ``want`` absent
        pages from ``off``, a DIRTY request up to ``dirty_want`` (default ``want``) pages, as
        the seed's ``max_out_pages`` bounds the lookup. With ``dirty=False`` (COMMIT, pins) a
        page of a pager-backed root that is already present is not marked Dirty.
        """
        if dirty_want is None:
            dirty_want = want
        if self.parent is None and self.page_source is None:
            # An anonymous root, the most common case (every store fault of a plain VMO): its
            # own slot is the whole story, the page or a fresh zero page in its place.
            v = self.page_list.get(off)
            if v > 0:
                return v
            pmm = self.pmm
            new = pmm.alloc_one(zero=True)
            self.page_list.set(off, new)
            pmm.set_owner(new, self, off)
            pmm.queue[new] = PageQueue.ANONYMOUS  # a fresh frame is in no queue, split clear
            self.range_change_locked(off, off + 1, RangeChangeOp.UNMAP)
            self.hier.generation += 1
            return new
        if self.is_slice:
            parent, poff = self.slice_parent()
            return parent.lookup_for_write_locked(off + poff, want, dirty=dirty)
        v = self.page_list.get(off)
        if v > 0:
            if dirty and self.is_source_preserving() and self.pmm.dirty[v] != DirtyState.DIRTY:
                self._prepare_for_write_locked(off, dirty_want)
            return v
        if v == EMPTY and self.parent is not None:
            owner, owner_off, v = self.find_initial_content_locked(off)
        else:
            owner, owner_off = self, off
        if v > 0:
            frame = v
        elif (v == MARKER or owner.page_source is None or owner_off >= owner.supply_zero_offset
              or not owner.is_source_preserving()):
            frame = ZERO_FRAME
        else:
            raise NeedPages(owner, owner_off, _empty_run(owner, owner_off, owner_off + want))
        if not owner.hidden or frame == ZERO_FRAME:
            if self.is_source_preserving():
                # Forking the zero page of a pager-backed root dirties it: a VMO that traps
                # dirty transitions asks its pager first (this raises NeedPages).
                assert owner is self and frame == ZERO_FRAME
                src = self.page_source
                assert src is not None
                if src.traps_dirty:
                    # COMMIT and pins look up one page at a time (seed: max_out_pages 1).
                    self._prepare_for_write_locked(off, dirty_want if dirty else 1)
                    raise AssertionError("a trapped dirty transition must raise NeedPages")
            if frame == ZERO_FRAME:
                # A frame never handed out is zero already: skip the copy (a write fault of a
                # mapping may never touch the frame's bytes at all).
                new = self._alloc_locked(1, zero=True)[0]
            else:
                new = self._alloc_locked(1, zero=False)[0]
                self.pmm.copy_frame(new, frame)
            if self.is_source_preserving():
                self.pmm.dirty[new] = DirtyState.DIRTY
                self._consider_trim_awaiting_clean_zero_range_locked(off)
                self.modified = True
                if (tracer := self.hier.kernel.tracer) is not None:
                    trace.dirtied(tracer, self, off)
            self._place_locked(off, new)
            self.range_change_locked(off, off + 1, RangeChangeOp.UNMAP)
            self.hier.generation += 1
            return new
        return self._clone_cow_page_locked(off, owner, frame, owner_off)

    def _is_uni_accessible_locked(self, frame: int, off: int) -> bool:
        """Can at most one side of this hidden node still see ``frame`` at ``off``? (seed:
        ``IsUniAccessibleLocked``). Decided in O(1) from the split bits and the children's
        limits alone: a page one side forked, or that lies outside one child's window."""
        if self.pmm.split[frame]:
            return True
        left, right = self.children
        lo = left.parent_offset
        if not lo + left.parent_start_limit <= off < lo + left.parent_limit:
            return True
        ro = right.parent_offset
        return not ro + right.parent_start_limit <= off < ro + right.parent_limit

    def _clone_cow_page_locked(self, off: int, owner: CowPages, frame: int,
                               owner_off: int) -> int:
        """Fork ``frame`` (owned by hidden ancestor ``owner``) down into this node.

        Works from the owner towards the leaf so that an allocation failure part-way leaves
        every invariant intact (each step either migrates or copies one level down).
        """
        path: list[CowPages] = []
        cur = self
        while cur is not owner:
            path.append(cur)
            assert cur.parent is not None
            cur = cur.parent
        path.reverse()  # children to step into, from just below the owner down to self
        pmm = self.pmm
        target, target_owner, cur_off = frame, owner, owner_off
        # The node that received the first copy, and the offset there: from that level down,
        # every node of its subtree that saw the old frame now sees a copy (seed: the range
        # updates after `skip_range_update` turns false).
        unmap_from: CowPages | None = None
        unmap_off = 0
        tracer = self.hier.kernel.tracer
        for child in path:
            child_off = cur_off - child.parent_offset
            side = SPLIT_LEFT if target_owner.children[0] is child else SPLIT_RIGHT
            if target_owner._is_uni_accessible_locked(target, cur_off):
                # Only the side we walk into can see it: move instead of copying.
                assert not (pmm.split[target] & side)
                pmm.split[target] = 0
                target_owner.page_list.remove(cur_off)
                if tracer is not None:
                    trace.migrated(tracer, target_owner, cur_off, child, child_off)
            else:
                cover = self._alloc_locked(1, zero=False)[0]
                pmm.copy_frame(cover, target)
                assert pmm.split[target] == 0
                pmm.split[target] = side
                target = cover
                if tracer is not None:
                    trace.forked(tracer, target_owner, cur_off, child, child_off, side)
                if unmap_from is None:
                    unmap_from, unmap_off = child, child_off
            child._place_locked(child_off, target)
            target_owner, cur_off = child, child_off
        if unmap_from is not None:
            unmap_from.range_change_locked(unmap_off, unmap_off + 1, RangeChangeOp.UNMAP)
        self.hier.generation += 1
        return target

    def _clone_cow_page_as_zero_locked(self, off: int, owner: CowPages, frame: int,
                                       owner_off: int, freed: list[int]) -> None:
        """Make this leaf read zeros at ``off`` where a hidden ancestor's page shows through."""
        parent = self.parent
        assert parent is not None
        p_off = off + self.parent_offset
        if owner is not parent:
            frame = parent._clone_cow_page_locked(p_off, owner, frame, owner_off)
        side = SPLIT_LEFT if parent.children[0] is self else SPLIT_RIGHT
        if parent._is_uni_accessible_locked(frame, p_off):
            assert not (self.pmm.split[frame] & side)
            parent.page_list.remove(p_off)
            freed.append(frame)
        else:
            self.pmm.split[frame] |= side
        self.page_list.set(off, MARKER)
        if (tracer := self.hier.kernel.tracer) is not None:
            trace.marker(tracer, self, off, True)

    # ---------------------------------------------------------------- read and write

    def read_locked(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` (byte units). Raises `NeedPages` for absent pages."""
        if self.is_slice:
            parent, poff = self.slice_parent()
            parent._check_readable_locked()
            return parent.read_locked(offset + poff * PAGE_SIZE, length)
        self._check_readable_locked()
        if length == 0:
            return b""
        frames = self._readable_frames_locked(offset, length)
        return _gather(self.pmm, frames, offset % PAGE_SIZE, length)

    def _readable_frames_locked(self, offset: int, length: int) -> list[int]:
        """The frames shown for bytes ``[offset, offset + length)`` (a non-slice node), pages
        a source must supply first raising `NeedPages`, accesses recorded for reclaim."""
        first = offset // PAGE_SIZE
        last = (offset + length - 1) // PAGE_SIZE + 1
        frames, absent = self.resolve_range(first, last)
        if absent:
            raise NeedPages(self.root(), absent[0], _run_length(absent))
        # The hierarchy knows its root: no walk up the levels on every read.
        root = self.hier.root
        if root is not None and root.page_source is not None:
            self.pmm.touch_many(frames)
        return frames

    def write_locked(self, data: memoryview, offset: int) -> None:
        """Store ``data`` at byte ``offset``. Pages are forked or committed first."""
        if self.is_slice:
            parent, poff = self.slice_parent()
            parent._check_readable_locked()
            parent.write_locked(data, offset + poff * PAGE_SIZE)
            return
        self._check_readable_locked()
        length = len(data)
        if length == 0:
            return
        first = offset // PAGE_SIZE
        last = (offset + length - 1) // PAGE_SIZE + 1
        # Pages the write covers entirely need no zeroing when freshly committed.
        frames = self._writable_frames_locked(first, last, -(-offset // PAGE_SIZE),
                                              (offset + length) // PAGE_SIZE)
        _scatter(self.pmm, frames, offset - first * PAGE_SIZE, data)
        if self.is_source_preserving():
            self.modified = True

    def write_from_fd_locked(self, fd: int, offset: int, length: int, fd_offset: int) -> int:
        """Fill bytes ``[offset, offset + length)`` straight from ``fd`` at ``fd_offset`` with
        ``preadv`` into the frames (no intermediate buffer). Bytes past the end of the file
        become zeros. Returns the bytes read from the file."""
        if self.is_slice:
            parent, poff = self.slice_parent()
            return parent.write_from_fd_locked(fd, offset + poff * PAGE_SIZE, length, fd_offset)
        self._check_readable_locked()
        if length == 0:
            return 0
        first = offset // PAGE_SIZE
        last = (offset + length - 1) // PAGE_SIZE + 1
        frames = self._writable_frames_locked(first, last, -(-offset // PAGE_SIZE),
                                              (offset + length) // PAGE_SIZE)
        pmm = self.pmm
        if pmm.coherence is not None:
            pmm.coherence.before_write(frames)
        views = _frame_views(pmm, frames, offset - first * PAGE_SIZE, length)
        # Pages the read was to fill whole were committed without zeroing: whatever a failed
        # read leaves unread must become zeros, never an older page's bytes.
        got = _vectored_io(os.preadv, fd, views, fd_offset,
                           on_error=lambda done: _zero_views_from(views, done))
        if got < length:
            _zero_views_from(views, got)
        if self.is_source_preserving():
            self.modified = True
        return got

    def read_to_fd_locked(self, fd: int, offset: int, length: int, fd_offset: int) -> int:
        """Write bytes ``[offset, offset + length)`` to ``fd`` at ``fd_offset`` with ``pwritev``
        straight from the frames. Raises `NeedPages` for absent pages first."""
        if self.is_slice:
            parent, poff = self.slice_parent()
            return parent.read_to_fd_locked(fd, offset + poff * PAGE_SIZE, length, fd_offset)
        self._check_readable_locked()
        if length == 0:
            return 0
        pmm = self.pmm
        skip = offset % PAGE_SIZE
        first = offset // PAGE_SIZE
        n = (offset + length - 1) // PAGE_SIZE + 1 - first
        own = self.page_list.dense(first, first + n)
        f0 = own[0]
        if (f0 > 0 and pmm.coherence is None and own[-1] == f0 + n - 1
                and own == list(range(f0, f0 + n))):
            # The usual case of a write-back: the node's own pages, one run of consecutive
            # frames, no mapping to recall from: one view, one pwritev.
            if self.page_source is not None:
                pmm.touch_run(f0, n)
            base = f0 * PAGE_SIZE + skip
            views = [pmm.physmap[base:base + length]]
        else:
            frames = self._readable_frames_locked(offset, length)
            if pmm.coherence is not None:
                pmm.coherence.before_read([f for f in frames if f != ZERO_FRAME])
            views = _frame_views(pmm, frames, skip, length)
        written = _vectored_io(os.pwritev, fd, views, fd_offset)
        if written < length:
            raise ZxError(Status.ERR_IO, f"short write: {written} of {length} bytes")
        return written

    def _writable_frames_locked(self, first: int, last: int, overwritten_from: int = 0,
                                overwritten_to: int = 0) -> list[int]:
        """Frames this node owns for every page of ``[first, last)``, committing as needed.

        Pages in ``[overwritten_from, overwritten_to)`` are about to be overwritten entirely,
        so a fresh page there need not be zeroed first.
        """
        dense = self.page_list.dense(first, last)
        if self.parent is None and self.page_source is None:
            # Anonymous root: every missing page is a fresh zero page; allocate them at once.
            n = last - first
            all_missing = max(dense) <= 0
            missing = range(n) if all_missing else [i for i, v in enumerate(dense) if v <= 0]
            if missing:
                new = self._alloc_locked(len(missing), zero=False)
                pmm = self.pmm
                if all_missing:
                    # Zero only the fresh pages the caller will not overwrite entirely.
                    lo = max(0, min(n, overwritten_from - first))
                    hi = max(lo, min(n, overwritten_to - first))
                    for i in (*range(lo), *range(hi, n)):
                        pmm.zero_frame(new[i])
                    dense = new
                else:
                    for i, f in zip(missing, new, strict=True):
                        if not overwritten_from <= first + i < overwritten_to:
                            pmm.zero_frame(f)
                        dense[i] = f
                if all_missing and not self.page_list.any_in_range(first, last):
                    self._place_run_locked(first, new, DirtyState.UNTRACKED)
                else:
                    for i in missing:
                        self._place_locked(first + i, dense[i])
                self.range_change_locked(first, last, RangeChangeOp.UNMAP)
                self.hier.generation += 1
            return dense
        out = []
        for i, v in enumerate(dense):
            off = first + i
            if v > 0 and not self.is_source_preserving():
                out.append(v)
            else:
                # Pager-backed pages go through the lookup for dirty tracking, which marks the
                # whole run Dirty (or asks the pager) in one step.
                out.append(self.lookup_for_write_locked(off, last - off))
        return out

    # ---------------------------------------------------------------- commit / decommit / zero

    def commit_range_locked(self, start: int, end: int) -> None:
        """Give this VMO a page of its own at every offset of ``[start, end)`` (seed:
        ``CommitRangeLocked``).

        In a hierarchy without a page source, the pages needed (one per offset that holds no
        page here) are counted and allocated before anything changes, so a commit that cannot
        fit fails with ``ERR_NO_MEMORY`` and commits nothing; the lookups then take their pages
        from that list and the unused ones are freed. A hierarchy with a page source allocates
        as it goes, as the seed does (the source may take the lock away while it supplies).
        """
        if self.is_slice:
            parent, poff = self.slice_parent()
            parent.commit_range_locked(start + poff, end + poff)
            return
        self._check_readable_locked()
        if self.root_page_source() is None:
            missing = (end - start) - self.page_list.count_pages(start, end)
            if missing == 0:
                return
            free = self.pmm.free_frames
            if missing > free:
                raise ZxError(Status.ERR_NO_MEMORY,
                              f"COMMIT needs {missing} pages, {free} are free")
            if self.parent is None:
                # An anonymous root fills its own slots, chunk by chunk, from the allocator
                # (`_writable_frames_locked` allocates each chunk whole, all or nothing).
                for chunk in range(start, end, COMMIT_CHUNK):
                    self._writable_frames_locked(chunk, min(end, chunk + COMMIT_CHUNK))
                return
            self.alloc_list = self.pmm.alloc(missing, zero=False)
            try:
                for off in range(start, end):
                    if self.page_list.get(off) <= 0:
                        self.lookup_for_write_locked(off, end - off, dirty=False)
            finally:
                pool, self.alloc_list = self.alloc_list, None
                self.pmm.free(pool)
            return
        for off in range(start, end):
            if self.page_list.get(off) <= 0:
                # Commit populates without dirtying what is present; absent content comes from
                # the source, and zero pages it forks start Dirty (seed: CommitRangeLocked).
                self.lookup_for_write_locked(off, end - off, dirty=False)

    def decommit_range_locked(self, start: int, end: int) -> None:
        """Free the pages of ``[start, end)``; only roots without a parent or source can."""
        if self.is_slice:
            parent, poff = self.slice_parent()
            parent.decommit_range_locked(start + poff, end + poff)
            return
        anonymous = self.anonymous_source()
        if self.parent is not None or (self.is_source_preserving() and anonymous is None):
            raise ZxError(Status.ERR_NOT_SUPPORTED,
                          "DECOMMIT is only supported on VMOs without a parent or pager")
        self._check_not_pinned_locked(start, end)
        self.range_change_locked(start, end, RangeChangeOp.UNMAP)
        freed = [v for _, v in self.page_list.take_range(start, end) if v > 0]
        self._free_frames_locked(freed)
        if anonymous is not None:
            anonymous.on_pages_removed(self, start, end)

    def _check_not_pinned_locked(self, start: int, end: int) -> None:
        if not self.pinned_pages:
            return
        pin = self.pmm.pin_count
        for off, v in self.page_list.pages(start, end):
            if pin[v]:
                raise ZxError(Status.ERR_BAD_STATE,
                              f"page at offset {off * PAGE_SIZE:#x} is pinned")

    def zero_bytes_locked(self, offset: int, length: int) -> None:
        """ZERO of ``[offset, offset + length)`` bytes: partial pages get zeros written, whole
        pages go to `zero_pages_locked` (seed: ``VmObjectPaged::ZeroRange``).

        The partial pages are looked up for write before any byte changes, so running out of
        memory there leaves the content as it was; a partial page that is zero by construction
        needs nothing (`page_would_read_zero_locked`).
        """
        if self.is_slice:
            parent, poff = self.slice_parent()
            parent.zero_bytes_locked(offset + poff * PAGE_SIZE, length)
            return
        # No discarded check, as in the seed: a discarded VMO holds no page, so zeroing it
        # changes nothing and it stays discarded.
        if length == 0:
            return
        end = offset + length
        first_full = -(-offset // PAGE_SIZE)
        last_full = end // PAGE_SIZE
        partial: list[tuple[int, int, int]] = []  # (page, from byte, to byte) within the page
        if first_full > last_full:
            page = offset // PAGE_SIZE
            partial.append((page, offset - page * PAGE_SIZE, end - page * PAGE_SIZE))
        else:
            if offset % PAGE_SIZE:
                page = offset // PAGE_SIZE
                partial.append((page, offset - page * PAGE_SIZE, PAGE_SIZE))
            if end % PAGE_SIZE:
                partial.append((last_full, 0, end - last_full * PAGE_SIZE))
        targets = []
        for page, lo, hi in partial:
            if self.page_would_read_zero_locked(page):
                continue
            targets.append((self.lookup_for_write_locked(page), lo, hi))
        pmm = self.pmm
        for frame, lo, hi in targets:
            if pmm.coherence is not None:
                pmm.coherence.before_write((frame,))
            base = frame * PAGE_SIZE
            pmm.physmap[base + lo: base + hi] = bytes(hi - lo)
        if targets and self.is_source_preserving():
            self.modified = True
        if first_full < last_full:
            self.zero_pages_locked(first_full, last_full)

    def page_would_read_zero_locked(self, off: int) -> bool:
        """Whether page ``off`` is zero by construction, so a partial ZERO can skip it (seed:
        ``PageWouldReadZeroLocked``, used by ``ZeroPartialPage``).

        Only the page list decides, never the bytes: a marker here, an empty slot past the
        supply-zero offset, or an empty slot that no ancestor fills in a hierarchy without a
        page source. A page that merely holds zeros (here or in an ancestor) is written, so a
        child of a pager-backed VMO stops tracking its parent there, as a write of zeros would.
        """
        slot = self.page_list.get(off)
        if slot == MARKER:
            return True
        if slot == EMPTY and self.is_source_preserving() and off >= self.supply_zero_offset:
            return True
        if slot <= 0:
            _, _, content = self.find_initial_content_locked(off)
            if content == EMPTY:
                return self.root_page_source() is None
        return False

    def zero_pages_locked(self, start: int, end: int) -> None:
        """Make ``[start, end)`` read zeros, with the fewest pages (seed: ``ZeroPagesLocked``)."""
        if self.is_slice:
            parent, poff = self.slice_parent()
            parent.zero_pages_locked(start + poff, end + poff)
            return
        if end <= start:
            return
        if (self.parent is None and not self.pinned_pages
                and (not self.is_source_preserving() or self.anonymous_source() is not None)):
            self.decommit_range_locked(start, end)
            return
        self.range_change_locked(start, end, RangeChangeOp.UNMAP)
        pmm = self.pmm
        if self.is_source_preserving():
            self._zero_pager_pages_locked(start, end)
            return
        freed: list[int] = []
        # Zeroing through the end of what we see of the parent is like a shrink: just stop
        # seeing the parent there, releasing what nobody else can see.
        if start < self.parent_limit <= end:
            assert self.parent is not None
            if self.parent.hidden:
                self._release_cow_parent_pages_locked(start, self.parent_limit, freed)
            else:
                self.parent_limit = start
        if self.parent is not None and self.parent.hidden and self.acts_anonymous():
            # Content the source root does not hold yet cannot carry a split bit: have it
            # supplied first, so that hiding it from this side is the usual fork to zero.
            self._free_frames_locked(freed)
            freed = []
            _, absent = self.resolve_range(start, max(start, min(end, self.parent_limit)))
            if absent:
                raise NeedPages(self.root(), absent[0], _run_length(absent))
        if self.parent is not None and self.parent.hidden:
            # Only offsets where we hold something, or an ancestor shows a page, can need
            # work: elsewhere an empty slot already reads zero. This keeps the cost of zeroing
            # a huge sparse range in the number of pages, not the size of the range.
            offsets: Iterator[int] = iter(sorted(self._zero_candidates_locked(start, end)))
        else:
            offsets = iter(range(start, end))
        for off in offsets:
            slot = self.page_list.get(off)
            if slot == MARKER:
                continue
            if slot > 0 and pmm.pin_count[slot]:
                # A pinned page cannot go away (a device may be using it): zero it in place.
                pmm.zero_frame(slot)
                continue
            can_see_parent = self.parent is not None and off < self.parent_limit
            if not can_see_parent:
                if slot > 0:
                    self.page_list.remove(off)
                    freed.append(slot)
                continue
            assert self.parent is not None
            parent_hidden = self.parent.hidden
            owner, owner_off, content = self.find_initial_content_locked(off)
            parent_has_content = content > 0
            if parent_hidden and not parent_has_content:
                # The parent is immutable and shows zeros here: an empty slot is enough.
                if slot > 0:
                    self.page_list.remove(off)
                    freed.append(slot)
                continue
            if not parent_has_content:
                # A mutable (non-hidden) parent shows zeros now but may not later: hold a zero
                # page of our own. An existing page is zeroed in place.
                if slot > 0:
                    pmm.zero_frame(slot)
                else:
                    self._free_frames_locked(freed)
                    freed = []
                    new = self._alloc_locked(1, zero=True)[0]
                    self._place_locked(off, new)
                continue
            if slot == EMPTY and owner.hidden:
                self._free_frames_locked(freed)
                freed = []
                self._clone_cow_page_as_zero_locked(off, owner, content, owner_off, freed)
                continue
            if slot > 0:
                self.page_list.remove(off)
                freed.append(slot)
            self.page_list.set(off, MARKER)
            if (tracer := self.hier.kernel.tracer) is not None:
                trace.marker(tracer, self, off, True)
        self._free_frames_locked(freed)
        self.hier.generation += 1

    def _zero_candidates_locked(self, start: int, end: int) -> set[int]:
        """Offsets in ``[start, end)`` holding an entry here or a page in an ancestor."""
        found = {off for off, _ in self.page_list.items(start, end)}
        cur, lo, hi, delta = self, start, min(end, self.parent_limit), 0
        while cur.parent is not None and lo < hi:
            parent = cur.parent
            delta += cur.parent_offset
            p_lo, p_hi = lo + cur.parent_offset, hi + cur.parent_offset
            found.update(off - delta for off, _ in parent.page_list.pages(p_lo, p_hi))
            lo, hi = p_lo, min(p_hi, parent.parent_limit)
            cur = parent
        return found

    def _zero_pager_pages_locked(self, start: int, end: int) -> None:
        """ZERO on a pager-backed root: a write of zeros (seed: ``ZeroPagesLocked``).

        Before supply_zero_offset the content is the pager's, so each page is looked up for
        write (supplied and dirty-tracked first) and cleared; it is Dirty afterwards and will
        be written back. A zero marker is zero already and is left alone, Clean. From supply_zero_offset on gaps are zero already: committed pages
        there are simply dropped.
        """
        pmm = self.pmm
        limit = min(end, self.supply_zero_offset)
        for off in range(start, limit):
            if self.page_list.get(off) == MARKER:
                # Zero already and Clean: the seed leaves a marker alone rather than dirty it.
                continue
            # The seed looks each page up alone (max_out_pages 1), so a DIRTY request never
            # sweeps in the markers after it; absent content is asked for as one run (README).
            pmm.zero_frame(self.lookup_for_write_locked(off, limit - off, dirty_want=1))
        freed = []
        for o, v in self.page_list.items(max(start, self.supply_zero_offset), end):
            if v > 0 and not pmm.pin_count[v]:
                self.page_list.remove(o)
                freed.append(v)
            elif v > 0:
                pmm.zero_frame(v)
        self._free_frames_locked(freed)
        self.modified = True
        self.hier.generation += 1

    # ---------------------------------------------------------------- releasing parent pages

    def _release_cow_parent_pages_helper_locked(self, start: int, end: int,
                                                sibling_visible: bool,
                                                freed: list[int]) -> None:
        """Stop seeing ``[start, end)`` of the parent, one level (seed:
        ``ReleaseCowParentPagesLockedHelper``).

        The limits shrink when the range is a tail or a head of our window. A hole in the
        middle that the sibling can still see cannot be expressed by limits: the parent's
        pages there get our split bit instead, and every ancestor is flagged
        ``partial_cow_release`` (a merge must then look at split bits). Pages the sibling
        cannot see, or has forked already, are freed.

        The seed's condition ``!sibling_visible || left ? right_split : left_split`` parses
        as ``(!sibling_visible || left) ? ...``; its comment states the intent, which is what
        this does: free when the sibling cannot see the range, or when the sibling's split
        bit says it forked the page.
        """
        parent = self.parent
        assert parent is not None
        p_start = start + self.parent_offset
        p_end = end + self.parent_offset
        skip_split_bits = True
        if self.parent_limit <= end:
            self.parent_limit = min(start, self.parent_limit)
            if self.parent_limit <= self.parent_start_limit:
                self.parent_limit = 0
                self.parent_start_limit = 0
        elif start == self.parent_start_limit:
            self.parent_start_limit = end
        elif sibling_visible:
            cur, cs, ce = self, start, end
            while cur.parent is not None and cs < ce:
                up = cur.parent
                up.partial_cow_release = True
                cs = max(cs + cur.parent_offset, up.parent_start_limit)
                ce = min(ce + cur.parent_offset, up.parent_limit)
                cur = up
            skip_split_bits = False
        if not sibling_visible and parent.parent is None:
            anonymous = parent.anonymous_source()
            if anonymous is not None:
                # Nobody sees this range of the source root any more: the copies the source
                # holds of it go too, as the frames below do.
                anonymous.on_pages_removed(parent, p_start, min(p_end, parent.size))
        left = parent.children[0] is self
        mine, other = (SPLIT_LEFT, SPLIT_RIGHT) if left else (SPLIT_RIGHT, SPLIT_LEFT)
        pmm = self.pmm
        plist = parent.page_list
        tracer, freed_before = self.hier.kernel.tracer, len(freed)
        for off, v in list(plist.items(p_start, p_end)):
            if v == MARKER:
                if not sibling_visible:
                    plist.remove(off)
                    if tracer is not None:
                        trace.marker(tracer, parent, off, False)
                continue
            if not sibling_visible or pmm.split[v] & other:
                plist.remove(off)
                freed.append(v)
                continue
            if skip_split_bits:
                # The limits now keep us out: the page is uni-accessible by them, and clear
                # bits let a merge move it without looking at them.
                pmm.split[v] = 0
            else:
                pmm.split[v] |= mine
        if tracer is not None:
            trace.released(tracer, self, start, end, len(freed) - freed_before)

    def _release_cow_parent_pages_locked(self, start: int, end: int, freed: list[int]) -> None:
        """Stop seeing ``[start, end)`` of the parent, freeing what nobody else sees (seed:
        ``ReleaseCowParentPagesLocked``).

        The range is cut, from its end, into pieces of one kind: seen by the sibling at some
        level (released there, with split bits if the limits cannot say it), or seen by no
        sibling up to some ancestor (released at every level on the way back down). A loop,
        never recursion: each piece walks up, then back down the path it recorded.
        """
        while end > start:
            cur_start, cur_end = start, end
            cur = self
            path: list[CowPages] = []  # the children we walked up through
            while (cur.parent is not None and cur.parent_start_limit < cur_end
                   and cur_start < cur.parent_limit):
                if cur_end > cur.parent_limit:
                    cur_start = cur.parent_limit
                    break
                cur_start = max(cur_start, cur.parent_start_limit)
                parent = cur.parent
                # Hidden nodes only ever hang below hidden nodes, and callers start here only
                # when the parent is hidden.
                assert parent.hidden
                other = parent.children[1] if parent.children[0] is cur else parent.children[0]
                our_start = cur_start + cur.parent_offset
                our_end = cur_end + cur.parent_offset
                other_start = other.parent_offset + other.parent_start_limit
                other_end = other.parent_offset + other.parent_limit
                if other_end >= our_end and other_start < our_end:
                    if other_start > our_start:
                        cur_start += other_start - our_start
                    cur._release_cow_parent_pages_helper_locked(cur_start, cur_end, True, freed)
                    break
                if our_start < other_end < our_end:
                    cur_start += other_end - our_start
                path.append(cur)
                cur_start += cur.parent_offset
                cur_end = our_end
                cur = parent
            # Walk back down applying the not-seen-by-sibling release at each level.
            while path:
                child = path.pop()
                cur_start -= child.parent_offset
                cur_end -= child.parent_offset
                child._release_cow_parent_pages_helper_locked(cur_start, cur_end, False, freed)
            end = cur_start

    # ---------------------------------------------------------------- resize

    def resize_locked(self, new_size: int) -> None:
        assert not self.is_slice
        freed: list[int] = []
        if new_size < self.size:
            start, end = new_size, self.size
            self._check_not_pinned_locked(start, end)
            self.range_change_locked(start, end, RangeChangeOp.UNMAP)
            if self.page_source is not None:
                self.page_source.on_resize(self, start, end)
            if self.is_source_preserving():
                if new_size < self.supply_zero_offset:
                    self._update_supply_zero_offset_locked(new_size)
                    self.awaiting_clean_zero_range_end = 0
                else:
                    # A cut at the supply-zero offset itself leaves no zero range at all.
                    self._consider_trim_awaiting_clean_zero_range_locked(new_size)
            if self.parent is not None and self.parent.hidden:
                self._release_cow_parent_pages_locked(start, end, freed)
                assert self.parent_limit <= new_size
            else:
                self.parent_limit = min(self.parent_limit, new_size)
            # A parent's tail that disappeared must stay invisible to children even if the
            # parent grows again.
            for child in self.children:
                if new_size < child.parent_offset:
                    child.parent_limit = 0
                else:
                    child.parent_limit = min(child.parent_limit, new_size - child.parent_offset)
            for _, v in self.page_list.take_range(start, end):
                if v > 0:
                    freed.append(v)
        elif new_size > self.size:
            self.range_change_locked(self.size, new_size, RangeChangeOp.UNMAP)
        self.size = new_size
        self._free_frames_locked(freed)
        self.hier.generation += 1

    # ---------------------------------------------------------------- closing and merging

    def close_locked(self) -> None:
        """The VMO handle of this node is gone: leave the tree if nothing depends on us."""
        self.paged_ref = None
        # A page source stays open while children keep the node: it closes with the node, in
        # `_destroy_locked` (seed: the root's ``fbl_recycle`` after its last child).
        node: CowPages | None = self
        while node is not None and node.paged_ref is None and not node.children \
                and not node.hidden:
            parent = node.parent
            node._destroy_locked()
            # A visible parent whose VMO is already closed may now be unreferenced too.
            node = parent if parent is not None and not parent.hidden else None

    def _destroy_locked(self) -> None:
        self._remove_from_discardable_lists_locked()
        if self.parent is not None:
            self.parent._remove_child_locked(self)
            self.parent = None
        elif self.hier.root is self:
            # The last node of the tree: the hierarchy is gone.
            self.hier.root = None
            with self.hier.kernel.hierarchies_lock:
                self.hier.kernel.hierarchies.discard(self.hier)
        if self.page_source is not None:
            self.page_source.on_close(self)
        frames = [v for _, v in self.page_list.take_range(0) if v > 0]
        pin = self.pmm.pin_count
        for f in frames:
            pin[f] = 0
        self.pinned_pages = 0
        self._free_frames_locked(frames)

    def _remove_child_locked(self, removed: CowPages) -> None:
        """``removed`` leaves the tree (seed: ``RemoveChildLocked``). A hidden node then merges
        into its remaining child and takes itself out of the tree."""
        if not self.hidden:
            self.children.remove(removed)
            return
        assert len(self.children) == 2
        removed_left = self.children[0] is removed
        self.children.remove(removed)
        child = self.children[0]
        source = self.anonymous_source() if self.parent is None else None
        if source is not None:
            # The hidden root of an anonymous source's snapshots: the source follows its
            # content into the child (`_hand_source_down_locked`).
            source.on_root_merge(self, child, child.parent_offset, child.parent_start_limit,
                                 child.parent_limit)
        if (tracer := self.hier.kernel.tracer) is not None:
            with trace.merging(tracer, self, child, removed):
                self._merge_content_with_child_locked(removed, removed_left)
        else:
            self._merge_content_with_child_locked(removed, removed_left)
        if self.partial_cow_release or self.merged_partial_release:
            child.merged_partial_release = True
        if child.page_attribution_user_id != self.page_attribution_user_id:
            # The VMO this node's pages were charged to just closed. Each hidden ancestor that
            # was charging it as well now charges its child we did not come up through.
            gone = self.page_attribution_user_id
            skip = gone
            cur = self
            while cur.parent is not None:
                parent = cur.parent
                assert parent.hidden
                if parent.page_attribution_user_id != gone:
                    break
                new_id = parent.children[0].page_attribution_user_id
                if new_id == skip:
                    new_id = parent.children[1].page_attribution_user_id
                parent.page_attribution_user_id = new_id
                skip = new_id
                cur = parent
        # Take this hidden node out of the tree: the remaining child takes its place.
        self.children = []
        if self.parent is not None:
            siblings = self.parent.children
            siblings[siblings.index(self)] = child
        else:
            self.hier.root = child
        child.parent = self.parent
        self.parent = None
        if source is not None:
            self._hand_source_down_locked(child)
        self.hier.generation += 1

    def _hand_source_down_locked(self, child: CowPages) -> None:
        """This hidden root, backed by an anonymous source, was merged into ``child``, the new
        root: the child is backed by the source from now on (the source re-aimed itself in
        ``on_root_merge``). Every absent page is the source's to answer (it holds nothing
        where the child saw zeros), and the child's pages take the dirty tracking of a source
        root: Dirty, since the arena holds their only copy."""
        src = self.page_source
        assert src is not None
        self.page_source = None
        self.supply_zero_offset = NO_SUPPLY_ZERO
        self.awaiting_clean_zero_range_end = 0
        child.page_source = src
        child.supply_zero_offset = child.size
        child.awaiting_clean_zero_range_end = 0
        frames = [v for _, v in child.page_list.pages()]
        if frames:
            self.pmm.set_dirty_many(frames, DirtyState.DIRTY, PageQueue.PAGER_BACKED_DIRTY)

    def _merge_content_with_child_locked(self, removed: CowPages, removed_left: bool) -> None:
        """Fold this hidden node into its one remaining child (seed: ``MergeContentWithChild``).

        The child must end up seeing no more of our parent than we did (its limits are
        clipped, or what we saw beyond its window is released), then our pages in its window
        move into it. The fast path (the child is a leaf at offset 0 and no partial release
        happened below us) clears the split bits of the pages the removed side had forked and
        lets the child's own entries cover ours. Otherwise each page is judged by its split
        bits: one the child's side forked (and migrated deeper) is stale and freed.
        """
        child = self.children[0]
        freed: list[int] = []
        vis_start = child.parent_offset + child.parent_start_limit
        merge_start = child.parent_offset
        merge_end = child.parent_offset + child.parent_limit
        for _, v in self.page_list.take_range(0, vis_start):
            if v > 0:
                freed.append(v)
        for _, v in self.page_list.take_range(merge_end):
            if v > 0:
                freed.append(v)
        if child.parent_offset + child.parent_limit > self.parent_limit:
            # The child must not see more of our parent than we could.
            if self.parent_limit < child.parent_offset:
                child.parent_limit = 0
                child.parent_start_limit = 0
            else:
                child.parent_limit = self.parent_limit - child.parent_offset
                child.parent_start_limit = min(child.parent_start_limit, child.parent_limit)
        else:
            # The child sees less of our parent than we did: release the rest.
            self._release_cow_parent_pages_locked(merge_end, self.parent_limit, freed)
        if removed.parent_offset + removed.parent_start_limit < vis_start:
            # What the removed child saw before the remaining child's window is seen by nobody.
            self._release_cow_parent_pages_locked(
                removed.parent_offset + removed.parent_start_limit, vis_start, freed)
        child.parent_offset += self.parent_offset
        pmm = self.pmm
        split = pmm.split
        mine = self.page_list
        theirs = child.page_list
        if merge_start == 0 and not self.partial_cow_release and not child.hidden:
            # Pages the removed leaf forked (it holds a page or marker there) are visible to
            # the child alone now: clear their bits.
            r_off = removed.parent_offset
            for off, _ in removed.page_list.items(removed.parent_start_limit,
                                                  removed.parent_limit):
                v = mine.get(off + r_off)
                if v > 0:
                    split[v] = 0
            # The child's own entries win; ours move in where it has none.
            for off, v in mine.take_range(0):
                if theirs.get(off) != EMPTY:
                    if v > 0:
                        freed.append(v)
                    continue
                theirs.set(off, v)
                if v > 0:
                    pmm.set_owner(v, child, off)
        else:
            child_side = SPLIT_RIGHT if removed_left else SPLIT_LEFT
            for off, v in mine.take_range(merge_start, merge_end):
                c_off = off - merge_start
                if theirs.get(c_off) != EMPTY:
                    if v > 0:
                        freed.append(v)
                    continue
                if v > 0:
                    if split[v] & child_side:
                        # Migrated into the child's side and on deeper: stale.
                        freed.append(v)
                        continue
                    # Forks happen all the way down, so if the child has no entry here
                    # neither has anyone below it.
                    split[v] = 0
                    pmm.set_owner(v, child, c_off)
                theirs.set(c_off, v)
        self._free_frames_locked(freed)

    # ---------------------------------------------------------------- attribution

    def attributed_pages_locked(self) -> int:
        """Pages charged to this visible node (seed: ``AttributedPagesInRangeLocked`` over the
        whole node): its own, and in the gaps of its page list those of hidden ancestors that
        the seed's rule charges to it (`_count_attributed_ancestor_pages_locked`)."""
        if self.hidden:
            return 0
        count = self.page_list.count_pages()
        parent = self.parent
        if parent is None or not parent.hidden:
            return count
        end = min(self.size, self.parent_limit)
        pos = 0
        for off, _ in self.page_list.items(0, end):
            if off > pos:
                count += self._count_attributed_gap_locked(pos, off)
            pos = off + 1
        if pos < end:
            count += self._count_attributed_gap_locked(pos, end)
        return count

    def _count_attributed_gap_locked(self, start: int, end: int) -> int:
        count = 0
        off = start
        while off < end:
            done, ours = self._count_attributed_ancestor_pages_locked(off, end - off)
            assert done > 0
            off += done
            count += ours
        return count

    def _count_attributed_ancestor_pages_locked(self, offset: int, size: int) -> tuple[int, int]:
        """Seed: ``CountAttributedAncestorPagesLocked``. Walks up from a gap ``[offset, offset
        + size)`` of this node and counts the hidden ancestors' pages charged to it: a page is
        ours if its node carries our attribution id, if it was split (so only our side sees
        it), or if our sibling at that level cannot see it. A gap the sibling sees in a node
        charged to the sibling is skipped. Returns ``(pages of the range processed, pages
        counted)``: when a gap must be followed further up, the walk continues with that gap
        only and the caller resumes after it (a loop, not recursion)."""
        cur, cur_off, cur_size = self, offset, size
        ours = 0
        attributed = 0
        split = self.pmm.split
        while cur_off < cur.parent_limit:
            parent = cur.parent
            assert parent is not None
            p_off = cur.parent_offset + cur_off
            sib = parent.children[1] if parent.children[0] is cur else parent.children[0]
            p_end = p_off + min(cur_size, cur.parent_limit - cur_off)
            sib_lo = sib.parent_offset + sib.parent_start_limit
            sib_hi = sib.parent_offset + sib.parent_limit
            same_id = parent.page_attribution_user_id == cur.page_attribution_user_id
            next_off, next_size = p_off + cur_size, 0
            pos = p_off
            stopped = False
            plist = parent.page_list
            # Hidden nodes between a leaf and the pages are often empty: one gap, no walk.
            entries = (list(plist.items(p_off, p_end)) if plist.any_in_range(p_off, p_end)
                       else [])
            entries.append((p_end, EMPTY))
            for off, v in entries:
                if off > pos:
                    # A gap [pos, off): ancestors further up may hold pages for it.
                    if same_id:
                        next_off, next_size, stopped = pos, off - pos, True
                    else:
                        lo, hi = max(pos, sib_lo), min(off, sib_hi)
                        if lo >= hi:
                            next_off, next_size, stopped = pos, off - pos, True
                        elif hi - lo < off - pos:
                            if lo == pos:
                                next_off, next_size, stopped = hi, off - hi, True
                            else:
                                next_off, next_size, stopped = pos, lo - pos, True
                        # else: the sibling sees the whole gap; what is up there is its.
                    if stopped:
                        break
                if off >= p_end:
                    break
                if v != MARKER and (same_id or split[v] or not sib_lo <= off < sib_hi):
                    ours += 1
                pos = off + 1
            if next_size == 0:
                break
            attributed += next_off - p_off
            cur, cur_off, cur_size = parent, next_off, next_size
        return attributed + cur_size, ours

    def committed_pages_locked(self) -> int:
        """Pages charged to the VMO this visible node stands for: `attributed_pages_locked`,
        plus those of visible ancestors whose VMO closed and that charge it instead."""
        total = self.attributed_pages_locked()
        cur = self.parent
        while cur is not None and not cur.hidden:
            if cur.paged_ref is None and cur.attribution_target() is self:
                total += cur.attributed_pages_locked()
            cur = cur.parent
        return total

    def attribution_target(self) -> CowPages | None:
        """The live VMO node the pages charged to this visible node count for: itself, or, for
        a node whose VMO closed while slices or at-least-on-write children keep it, its first
        live descendant (Zircon charges such pages to nobody; see the README)."""
        for n in self.walk_subtree():
            if n.paged_ref is not None and not n.hidden:
                return n
        return None

    # ---------------------------------------------------------------- discardable

    def _move_to_list_locked(self, state: DiscardableState) -> None:
        k = self.hier.kernel
        with k.discardable_lock:
            k.reclaim_candidates.pop(self, None)
            k.non_reclaim_candidates.pop(self, None)
            if state == DiscardableState.RECLAIMABLE:
                k.reclaim_candidates[self] = None
            elif state != DiscardableState.UNSET:
                k.non_reclaim_candidates[self] = None
            self.discardable_state = state

    def _remove_from_discardable_lists_locked(self) -> None:
        if self.discardable_state != DiscardableState.UNSET:
            self._move_to_list_locked(DiscardableState.UNSET)

    def lock_locked(self, try_only: bool) -> bool:
        """LOCK / TRY_LOCK. Returns whether the content was discarded before this lock."""
        discarded = self.discardable_state == DiscardableState.DISCARDED
        if discarded and try_only:
            raise ZxError(Status.ERR_UNAVAILABLE, "TRY_LOCK of a discarded VMO")
        if self.lock_count == 0:
            self._move_to_list_locked(DiscardableState.UNRECLAIMABLE)
        self.lock_count += 1
        return discarded

    def unlock_locked(self) -> None:
        if self.lock_count == 0:
            raise ZxError(Status.ERR_BAD_STATE, "UNLOCK of a VMO that is not locked")
        if self.lock_count == 1:
            self.last_unlock_time = time.monotonic()
            self._move_to_list_locked(DiscardableState.RECLAIMABLE)
        self.lock_count -= 1

    def discard_locked(self, min_age: float) -> int:
        """Drop every page of an unlocked discardable VMO; returns pages freed."""
        if self.discardable_state != DiscardableState.RECLAIMABLE:
            return 0
        if time.monotonic() - self.last_unlock_time < min_age:
            return 0
        if self.pinned_pages:
            return 0  # a device may be using them: pinned pages are never discarded
        assert self.lock_count == 0
        self.range_change_locked(0, self.size, RangeChangeOp.UNMAP)
        frames = [v for _, v in self.page_list.take_range(0) if v > 0]
        self._free_frames_locked(frames)
        self.eviction_events += 1
        self._move_to_list_locked(DiscardableState.DISCARDED)
        if (tracer := self.hier.kernel.tracer) is not None:
            trace.discarded(tracer, self, len(frames))
        return len(frames)

    # ---------------------------------------------------------------- pinning

    def pin_locked(self, start: int, end: int, writable: bool) -> list[int]:
        """Commit ``[start, end)`` and pin its pages (seed: ``CommitRangeLocked`` then
        ``PinRangeLocked``, as ``VmObjectPaged::CommitRangeInternal`` does with ``pin``).

        A commit that cannot fit fails before anything changes; a pin count overflow pins
        nothing.
        """
        if self.is_slice:
            parent, poff = self.slice_parent()
            return parent.pin_locked(start + poff, end + poff, writable)
        self.commit_range_locked(start, end)
        frames = self.page_list.dense(start, end)
        assert min(frames) > 0, "a committed range holds a page at every offset"
        pmm = self.pmm
        for f in frames:
            if pmm.pin_count[f] == 0xFFFF:
                raise ZxError(Status.ERR_NO_RESOURCES, "pin count overflow")
        for f in frames:
            if pmm.pin_count[f] == 0:
                self.pinned_pages += 1
                pmm.set_queue(f, PageQueue.WIRED)
            pmm.pin_count[f] += 1
        return frames

    def unpin_locked(self, start: int, end: int) -> None:
        if self.is_slice:
            parent, poff = self.slice_parent()
            parent.unpin_locked(start + poff, end + poff)
            return
        pmm = self.pmm
        for off in range(start, end):
            f = self.page_list.get(off)
            if f <= 0 or pmm.pin_count[f] == 0:
                continue  # the pages went away with the VMO
            pmm.pin_count[f] -= 1
            if pmm.pin_count[f] == 0:
                self.pinned_pages -= 1
                pmm.set_queue(f, self._queue_for(pmm.dirty[f]))

    # ---------------------------------------------------------------- zero-page dedup

    def scan_for_zero_pages_locked(self, reclaim: bool) -> int:
        """Count (and with ``reclaim`` replace by markers) pages that are all zeros."""
        if self.hidden or self.is_slice or self.page_source is not None:
            return 0
        pmm = self.pmm
        found = []
        for off, v in self.page_list.pages():
            if pmm.pin_count[v] == 0 and pmm.is_zero(v):
                found.append((off, v))
        if reclaim and found:
            for off, _ in found:
                self.range_change_locked(off, off + 1, RangeChangeOp.UNMAP)
                self.page_list.set(off, MARKER)
            self._free_frames_locked([v for _, v in found])
            self.eviction_events += 1
        return len(found)

    # ---------------------------------------------------------------- pager-backed roots
    #
    # A root backed by a content-preserving page source (a user pager) tracks the dirty state
    # of every page it holds: Clean (same as the pager's copy), Dirty (written since), or
    # AwaitingClean (being written back). ``supply_zero_offset`` splits the VMO: before it,
    # content comes from the pager (an empty slot means "not supplied yet"); from it on, the
    # content is zero and supplied by the kernel, and every page there is un-Clean.
    # ``awaiting_clean_zero_range_end`` tracks one zero range [supply_zero_offset, end) being
    # written back, which WRITEBACK_END turns Clean by advancing supply_zero_offset past it.

    def _set_dirty_state_locked(self, frame: int, off: int, state: DirtyState) -> None:
        """Seed: ``UpdateDirtyStateLocked`` for a page already in the list."""
        pmm = self.pmm
        pmm.dirty[frame] = state
        if state == DirtyState.DIRTY:
            self._consider_trim_awaiting_clean_zero_range_locked(off)
            self.modified = True
            if (tracer := self.hier.kernel.tracer) is not None:
                trace.dirtied(tracer, self, off)
        if pmm.pin_count[frame]:
            return  # stays wired; the queue follows the state when unpinned
        pmm.set_queue(frame, self._queue_for(state))

    def _prepare_for_write_locked(self, start: int, count: int) -> int:
        """Make pages from ``start`` Dirty before a write (seed: ``PrepareForWriteLocked``).

        Without dirty trapping the first run of committed pages is marked Dirty at once and its
        length returned. With trapping, the leading already-Dirty run is returned if nothing
        else needs a transition; otherwise `NeedPages` asks the pager for a DIRTY transition of
        the run of pages (and zero gaps past supply_zero_offset) that need one.
        """
        src = self.page_source
        assert src is not None and self.is_source_preserving()
        # One lookup covers at most LOOKUP_MAX_PAGES pages: a longer write asks again for the
        # rest once these are Dirty, so a pager sees DIRTY requests of at most that many.
        end = min(start + min(count, LOOKUP_MAX_PAGES), self.size)
        pmm = self.pmm
        if not src.traps_dirty:
            n = 0
            for off in range(start, end):
                v = self.page_list.get(off)
                if v <= 0:
                    break
                if pmm.dirty[v] != DirtyState.DIRTY:
                    self._set_dirty_state_locked(v, off, DirtyState.DIRTY)
                n += 1
            return n
        szo = self.supply_zero_offset
        dirty_len = 0
        run_start, run_len = start, 0
        found_gap = False
        off = start
        while off < min(end, szo):
            v = self.page_list.get(off)
            if v == EMPTY:
                found_gap = True
                break
            if v > 0 and pmm.dirty[v] == DirtyState.DIRTY:
                if run_len:
                    break
                dirty_len += 1
            else:
                if run_len == 0:
                    run_start = off
                run_len += 1
            off += 1
        else:
            if not found_gap and szo < end:
                off = max(start, szo)
                while off < end:
                    v = self.page_list.get(off)
                    if v > 0 and pmm.dirty[v] == DirtyState.DIRTY:
                        if run_len:
                            break
                        dirty_len += 1
                    else:
                        if run_len == 0:
                            run_start = off
                        if run_start + run_len != off:
                            break
                        run_len += 1
                    off += 1
        if run_len:
            raise NeedPages(self, run_start, run_len, dirty=True)
        return dirty_len

    def _update_supply_zero_offset_locked(self, new: int) -> None:
        self.supply_zero_offset = new
        if self.awaiting_clean_zero_range_end <= new:
            self.awaiting_clean_zero_range_end = 0

    def _consider_trim_awaiting_clean_zero_range_locked(self, off: int) -> None:
        """A page dirtied (or a size cut) inside the AwaitingClean zero range ends it there."""
        if self.supply_zero_offset <= off < self.awaiting_clean_zero_range_end:
            self.awaiting_clean_zero_range_end = off
            if self.awaiting_clean_zero_range_end <= self.supply_zero_offset:
                self.awaiting_clean_zero_range_end = 0

    def _try_advance_supply_zero_offset_locked(self, start: int, end: int) -> None:
        """Move supply_zero_offset over committed (hence un-Clean) pages right after it."""
        szo = self.supply_zero_offset
        if start <= szo < end:
            new = szo
            while new < end and self.page_list.get(new) > 0:
                new += 1
            if new != szo:
                self._update_supply_zero_offset_locked(new)

    def supply_pages_locked(self, start: int, slots: list[int], *,
                            dirty: bool = False) -> list[int]:
        """Place supplied frames (or MARKERs for zero pages) where content is truly absent.

        Seed: ``SupplyPagesLocked``. Pages already present, and offsets from
        supply_zero_offset on, keep their content; the supplied frames for them are returned
        for the caller to free. Supplied pages start Clean; with ``dirty`` (a source handing
        back pages whose only copy is then the arena, as the swap source does on swap-in)
        they start Dirty, placed so in one step.
        """
        assert self.is_source_preserving()
        src = self.page_source
        assert src is not None
        rejected: list[int] = []
        pmm = self.pmm
        state = DirtyState.DIRTY if dirty else DirtyState.CLEAN
        queue = self._queue_for(state)
        end = start + len(slots)
        if end <= self.supply_zero_offset and not self.page_list.any_in_range(start, end):
            # Every slot is absent (the usual answer to a request): place them all at once.
            if min(slots) > 0:
                # No zero markers (what a supply from a file hands over): one run, placed with
                # slices; consecutive frames reach the page list as a slice of `ascending`.
                run = pmm.ascending_run(slots[0], len(slots)) if consecutive(slots) else slots
                self.page_list.fill_empty_run(start, run)
                pmm.place_many(slots, self, start, queue, state)
            else:
                self.page_list.fill_empty_run(start, slots)
                # The frames between the markers, each stretch placed in one step.
                i = 0
                while i < len(slots):
                    if slots[i] <= 0:
                        i += 1
                        continue
                    j = i + 1
                    while j < len(slots) and slots[j] > 0:
                        j += 1
                    pmm.place_many(slots[i:j], self, start + i, queue, state)
                    i = j
            self.range_change_locked(start, end, RangeChangeOp.UNMAP)
            src.on_pages_supplied(self, start, len(slots))
            self.hier.generation += 1
            return rejected
        run_start, run_len = start, 0
        for i, v in enumerate(slots):
            off = start + i
            if self.page_list.get(off) != EMPTY or off >= self.supply_zero_offset:
                if v > 0:
                    rejected.append(v)
                if run_len:
                    self.range_change_locked(run_start, run_start + run_len, RangeChangeOp.UNMAP)
                    src.on_pages_supplied(self, run_start, run_len)
                run_start, run_len = off + 1, 0
                continue
            if v > 0:
                pmm.dirty[v] = state
                self._place_locked(off, v)
            else:
                self.page_list.set(off, MARKER)
            run_len += 1
        if run_len:
            self.range_change_locked(run_start, run_start + run_len, RangeChangeOp.UNMAP)
            src.on_pages_supplied(self, run_start, run_len)
        self.hier.generation += 1
        return rejected

    def take_pages_locked(self, start: int, end: int) -> list[int]:
        """Remove ``[start, end)`` from this anonymous root for a supply: the frames it holds,
        MARKER where it holds none. The VMO reads zeros there afterwards.

        Seed: ``TakePagesLocked``. Only a VMO that owns all of its content and shares none of
        it can give pages away: pinned pages, a parent (a clone, a slice, or a VMO with a
        snapshot child, whose node then sits below a hidden parent), a page source, or any
        child (a slice or at-least-on-write child) is ``ERR_BAD_STATE``.
        """
        self._check_readable_locked()
        if end - start > MAX_SUPPLY_PAGES:
            raise ZxError(Status.ERR_NO_MEMORY,
                          f"a supply of {end - start} pages is more than the page lists can "
                          f"track at once ({MAX_SUPPLY_PAGES} pages)")
        self._check_not_pinned_locked(start, end)
        if self.is_slice:
            raise ZxError(Status.ERR_BAD_STATE, "aux_vmo is a slice")
        if self.parent is not None:
            raise ZxError(Status.ERR_BAD_STATE,
                          "aux_vmo is a clone or has a snapshot child: its pages are shared")
        if self.page_source is not None:
            raise ZxError(Status.ERR_BAD_STATE, "aux_vmo is pager-backed")
        if self.children:
            raise ZxError(Status.ERR_BAD_STATE, "aux_vmo has children")
        self.range_change_locked(start, end, RangeChangeOp.UNMAP)
        dense = self.page_list.take_dense(start, end)
        self.pmm.unown_many(dense if min(dense) > 0 else [v for v in dense if v > 0])
        self.hier.generation += 1
        return [v if v > 0 else MARKER for v in dense]

    def dirty_pages_locked(self, start: int, end: int) -> None:
        """Acknowledge a DIRTY request (seed: ``DirtyPagesLocked``)."""
        src = self.page_source
        assert src is not None and self.is_source_preserving()
        if not src.traps_dirty:
            raise ZxError(Status.ERR_NOT_SUPPORTED, "the VMO does not trap dirty transitions")
        pmm = self.pmm
        szo = self.supply_zero_offset
        # Zero pages must become real pages to be dirtied: markers before supply_zero_offset
        # and gaps from it on. Allocate them all first so that a failure changes nothing.
        need = [off for off, v in self.page_list.items(start, min(end, szo)) if v == MARKER]
        if szo < end:
            tail = max(start, szo)
            gaps = (end - tail) - sum(1 for _ in self.page_list.items(tail, end))
            if len(need) + gaps > self.pmm.free_frames:
                raise ZxError(Status.ERR_NO_MEMORY,
                              f"DIRTY needs {len(need) + gaps} zero pages, "
                              f"{self.pmm.free_frames} are free")
            present = {off for off, _ in self.page_list.items(tail, end)}
            need += [off for off in range(tail, end) if off not in present]
        frames = self._alloc_locked(len(need), zero=True)
        for off, f in zip(need, frames, strict=True):
            pmm.dirty[f] = DirtyState.DIRTY
            self._place_locked(off, f)
            self._consider_trim_awaiting_clean_zero_range_locked(off)
            if (tracer := self.hier.kernel.tracer) is not None:
                trace.dirtied(tracer, self, off)
        if need:
            self.range_change_locked(start, end, RangeChangeOp.UNMAP)
            self.modified = True
        for off, v in list(self.page_list.pages(start, end)):
            if pmm.dirty[v] != DirtyState.DIRTY:
                self._set_dirty_state_locked(v, off, DirtyState.DIRTY)
        # Everything a DIRTY request can cover in the range is Dirty now: wake its waiters.
        src.on_pages_dirtied(self, start, end - start)
        self.hier.generation += 1

    def _dirty_states_locked(self, start: int, end: int
                             ) -> list[tuple[int, Sequence[int], bytes]]:
        """For each stretch of ``[start, end)`` that holds pages (`PageList.segments`): its
        offset, its slots and, byte for byte, the dirty state of the page in each slot
        (`_NO_PAGE` where there is none), so that runs of one state can be found with a
        C-level regular expression instead of a walk page by page. Slots that are one run of
        consecutive frames come back as a ``range`` (compared with `PhysicalMemory.ascending`
        as arrays, so that no int is made per page)."""
        pmm = self.pmm
        dirty = pmm.dirty
        out: list[tuple[int, Sequence[int], bytes]] = []
        for seg_start, slots in self.page_list.segments(start, end):
            n = len(slots)
            f0 = slots[0]
            if f0 > 0 and f0 + n <= pmm.total_frames and slots == pmm.ascending[f0:f0 + n]:
                out.append((seg_start, range(f0, f0 + n), bytes(dirty[f0:f0 + n])))
                continue
            frames = slots.tolist()
            if min(frames) > 0:
                states = bytes(map(dirty.__getitem__, frames))
            else:
                states = bytes([dirty[v] if v > 0 else _NO_PAGE for v in frames])
            out.append((seg_start, frames, states))
        return out

    def _set_dirty_runs_locked(self, start: int, end: int, pattern: re.Pattern[bytes],
                               state: DirtyState) -> None:
        """Pages of ``[start, end)`` whose state matches ``pattern`` (one state byte) move to
        ``state`` and its queue, run by run."""
        queue = self._queue_for(state)
        for _, dense, states in self._dirty_states_locked(start, end):
            for m in pattern.finditer(states):
                self.pmm.set_dirty_many(dense[m.start():m.end()], state, queue)

    def writeback_begin_locked(self, start: int, end: int) -> None:
        """Seed: ``WritebackBeginLocked``: Dirty pages become AwaitingClean."""
        self._set_dirty_runs_locked(start, end, _DIRTY_RUNS, DirtyState.AWAITING_CLEAN)
        self._try_advance_supply_zero_offset_locked(start, end)
        szo = self.supply_zero_offset
        if start <= szo < end:
            nxt = self.page_list.first_in_range(szo, end)
            zero_end = nxt[0] if nxt is not None else end
            self.awaiting_clean_zero_range_end = zero_end if zero_end > szo else 0
        # Later writes must be seen again, to dirty the pages anew.
        self.range_change_locked(start, end, RangeChangeOp.REMOVE_WRITE)

    def writeback_end_locked(self, start: int, end: int) -> None:
        """Seed: ``WritebackEndLocked``: AwaitingClean pages (and zero range) become Clean."""
        pmm = self.pmm
        self._try_advance_supply_zero_offset_locked(start, end)
        szo = self.supply_zero_offset
        if start > szo:
            return
        self._set_dirty_runs_locked(start, min(end, szo), _AWAITING_CLEAN_RUNS,
                                    DirtyState.CLEAN)
        if end <= szo or self.awaiting_clean_zero_range_end == 0:
            return
        zero_end = min(self.awaiting_clean_zero_range_end, end)
        self._update_supply_zero_offset_locked(zero_end)
        self._try_advance_supply_zero_offset_locked(zero_end, end)
        for off, v in list(self.page_list.pages(zero_end, self.supply_zero_offset)):
            if pmm.dirty[v] == DirtyState.AWAITING_CLEAN:
                self._set_dirty_state_locked(v, off, DirtyState.CLEAN)

    def dirty_ranges_locked(self, start: int, end: int) -> list[tuple[int, int, bool]]:
        """``(offset, length, is_zero)`` runs of un-Clean content (seed:
        ``EnumerateDirtyRangesLocked``): Dirty/AwaitingClean pages, and from
        supply_zero_offset on every gap, reported as a zero range."""
        self._try_advance_supply_zero_offset_locked(start, end)
        szo = self.supply_zero_offset
        # Runs of different segments are never adjacent: segments are whole nodes apart.
        out: list[tuple[int, int, bool]] = [
            (seg_start + m.start(), m.end() - m.start(), False)
            for seg_start, _, states in self._dirty_states_locked(start, min(end, szo))
            for m in _NOT_CLEAN_RUNS.finditer(states)]
        if szo < end:
            # Past supply_zero_offset only committed pages are listed; the gaps between them
            # are the zero ranges (so a huge zero tail costs nothing to report).
            off = max(start, szo)
            for page, _ in self.page_list.pages(off, end):
                if page > off:
                    out.append((off, page - off, True))
                if out and not out[-1][2] and out[-1][0] + out[-1][1] == page:
                    out[-1] = (out[-1][0], out[-1][1] + 1, False)
                else:
                    out.append((page, 1, False))
                off = page + 1
            if off < end:
                out.append((off, end - off, True))
        return out

    def evict_page_locked(self, frame: int) -> bool:
        """Drop a clean, unpinned page the source can supply again (seed:
        ``RemovePageForEviction``). Returns whether it was evicted."""
        pmm = self.pmm
        off = pmm.offset[frame]
        if self.page_source is None or self.page_list.get(off) != frame:
            return False
        if pmm.pin_count[frame] or pmm.dirty[frame] != DirtyState.CLEAN:
            return False
        if pmm.always_need[frame]:
            pmm.touch(frame)  # out of the way of the eviction loop
            return False
        self.range_change_locked(off, off + 1, RangeChangeOp.UNMAP)
        self.page_list.remove(off)
        self._free_frames_locked([frame])
        self.eviction_events += 1
        if (tracer := self.hier.kernel.tracer) is not None:
            trace.evicted(tracer, self, off)
        return True

    def hint_locked(self, start: int, end: int, always_need: bool) -> None:
        """DONT_NEED / ALWAYS_NEED hints for the clean pages of a pager-backed root."""
        pmm = self.pmm
        for _, v in self.page_list.pages(start, end):
            if always_need:
                pmm.always_need[v] = 1
            else:
                pmm.always_need[v] = 0
                if pmm.queue[v] == PageQueue.PAGER_BACKED:
                    pmm.set_queue(v, PageQueue.PAGER_BACKED_INACTIVE)

    # ---------------------------------------------------------------- anonymous page sources
    # A page source that declares ``anonymous = True`` (the swap source, `vmo.pager.swap`)
    # backs VMOs that behave as anonymous memory whose pages it can hold elsewhere: DECOMMIT
    # and ZERO of whole pages free them as on an anonymous root, and the source is told
    # (``on_pages_removed``) so that it drops its own copies (crosvm's handle_page_remove).

    def anonymous_source(self) -> AnonymousPageSource | None:
        src = self.page_source
        if src is not None and getattr(src, "anonymous", False):
            return cast("AnonymousPageSource", src)
        return None

    def acts_anonymous(self) -> bool:
        """Whether this node's hierarchy behaves as anonymous memory: no page source, or an
        anonymous one at the root. Such hierarchies take snapshots: the root then becomes
        the hidden node and keeps its source, which supplies absent content into it; forks
        copy or migrate it from there as from any hidden node, and a merge of that root
        hands the source down (`_hand_source_down_locked`). See the README's swap notes."""
        root = self.root()
        return root.page_source is None or root.anonymous_source() is not None

    def detach_source_locked(self) -> None:
        """Seed: ``DetachSourceLocked``: drop every page so that later accesses fail."""
        self.range_change_locked(0, self.size, RangeChangeOp.UNMAP)
        frames = [v for _, v in self.page_list.take_range(0) if v > 0]
        pin = self.pmm.pin_count
        pinned = [f for f in frames if pin[f]]
        for f in pinned:
            pin[f] = 0
        self.pinned_pages = 0
        self._free_frames_locked(frames)
        self.hier.generation += 1


# Dirty-state bytes as `CowPages._dirty_states_locked` spells them, and the runs it looks for.
_NO_PAGE = 0xFF
_DIRTY_RUNS = re.compile(bytes([ord("["), DirtyState.DIRTY, ord("]"), ord("+")]))
_AWAITING_CLEAN_RUNS = re.compile(bytes([ord("["), DirtyState.AWAITING_CLEAN, ord("]"),
                                         ord("+")]))
_NOT_CLEAN_RUNS = re.compile(bytes([ord("["), DirtyState.UNTRACKED, DirtyState.DIRTY,
                                    DirtyState.AWAITING_CLEAN, ord("]"), ord("+")]))


def _run_length(offsets: list[int]) -> int:
    n = 1
    while n < len(offsets) and offsets[n] == offsets[0] + n:
        n += 1
    return n


def _empty_run(node: CowPages, off: int, end: int) -> int:
    """Length of the run of absent pages from ``off`` (at most `MAX_REQUEST_PAGES`)."""
    limit = min(end, node.supply_zero_offset, off + MAX_REQUEST_PAGES)
    nxt = node.page_list.first_in_range(off + 1, limit) if off + 1 < limit else None
    return (nxt[0] if nxt is not None else max(limit, off + 1)) - off


def _frame_runs(frames: list[int]) -> list[tuple[int, int, int]]:
    """Split ``frames`` into runs ``(index, first_frame, count)`` of consecutive frames (each
    the page after the one before) or of the zero frame repeated.

    The copy loops work run by run. Whole-list checks, at C speed, find the usual answers (one
    run, or nothing but zeros) without looking at each page in Python.
    """
    n = len(frames)
    if not n:
        return []
    f0 = frames[0]
    if f0 != ZERO_FRAME and frames[-1] - f0 == n - 1 and frames == list(range(f0, f0 + n)):
        return [(0, f0, n)]
    if f0 == ZERO_FRAME and frames.count(ZERO_FRAME) == n:
        return [(0, ZERO_FRAME, n)]
    runs = []
    i = 0
    while i < n:
        f = frames[i]
        j = i + 1
        if f == ZERO_FRAME:
            while j < n and frames[j] == ZERO_FRAME:
                j += 1
        else:
            while j < n and frames[j] == f + (j - i):
                j += 1
        runs.append((i, f, j - i))
        i = j
    return runs


def _gather(pmm: PhysicalMemory, frames: list[int], skip: int, length: int) -> bytes:
    """Concatenate the bytes of ``frames`` from byte ``skip`` for ``length`` bytes.

    Runs of consecutive frames are sliced out of the physmap in one piece, runs of the zero
    frame become one zero buffer, and ``bytes.join`` makes the single final copy.
    """
    if pmm.coherence is not None:
        pmm.coherence.before_read([f for f in frames if f != ZERO_FRAME])
    chunks: list[Any] = []
    physmap = pmm.physmap
    for i, f, count in _frame_runs(frames):
        run_start = i * PAGE_SIZE - skip  # byte position of the run in the requested bytes
        lo = max(0, run_start)
        hi = min(length, run_start + count * PAGE_SIZE)
        if lo < hi:
            if f == ZERO_FRAME:
                chunks.append(bytes(hi - lo))
            else:
                base = f * PAGE_SIZE + (lo - run_start)
                chunks.append(physmap[base: base + (hi - lo)])
    if len(chunks) == 1:
        return bytes(chunks[0])
    return b"".join(chunks)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_ZEROS = memoryview(bytes(1 << 20))


def _frame_views(pmm: PhysicalMemory, frames: list[int], skip: int,
                 length: int) -> list[memoryview]:
    """Memoryviews covering ``length`` bytes of ``frames`` from byte ``skip``: one per run of
    consecutive frames; runs of the zero frame map to a shared read-only zero buffer."""
    views: list[memoryview] = []
    physmap = pmm.physmap
    for i, f, count in _frame_runs(frames):
        run_start = i * PAGE_SIZE - skip
        lo, hi = max(0, run_start), min(length, run_start + count * PAGE_SIZE)
        if lo < hi:
            if f == ZERO_FRAME:
                size = hi - lo
                while size:
                    step = min(size, len(_ZEROS))
                    views.append(_ZEROS[:step])
                    size -= step
            else:
                base = f * PAGE_SIZE + (lo - run_start)
                views.append(physmap[base: base + (hi - lo)])
    return views


def _vectored_io(call: Callable[[int, Any, int], int], fd: int, views: list[memoryview],
                 offset: int, on_error: Callable[[int], None] | None = None) -> int:
    """``preadv``/``pwritev`` over ``views`` in IOV_MAX batches until done or end of file.

    On failure ``on_error`` is called with the bytes done before the ``ZxError`` is raised."""
    if len(views) == 1:
        # One run of frames (the usual case): one call, done unless it came up short.
        try:
            n = call(fd, views, offset)
        except OSError as e:
            if on_error is not None:
                on_error(0)
            raise ZxError(fd_error_status(fd, e), f"file I/O failed at offset {offset}: {e}") \
                from e
        if n == len(views[0]) or n == 0:
            return n
        views = [views[0][n:]]
        more = _vectored_io(call, fd, views, offset + n,
                            None if on_error is None else lambda done: on_error(n + done))
        return n + more
    done = 0
    i = 0
    while i < len(views):
        batch = views[i:i + _IOV_MAX]
        want = sum(len(v) for v in batch)
        try:
            n = call(fd, batch, offset + done)
        except OSError as e:
            if on_error is not None:
                on_error(done)
            raise ZxError(fd_error_status(fd, e),
                          f"file I/O failed at offset {offset + done}: {e}") from e
        done += n
        if n < want:
            # Short: end of file (reads), or a partial write; resume inside the batch once.
            if n == 0:
                return done
            rest: list[memoryview] = []
            skip = n
            for v in batch:
                if skip >= len(v):
                    skip -= len(v)
                    continue
                rest.append(v[skip:])
                skip = 0
            views = rest + views[i + len(batch):]
            i = 0
            continue
        i += len(batch)
    return done


def fill_frames_from_fd(pmm: PhysicalMemory, frames: list[int], fd: int, fd_offset: int) -> int:
    """Read ``len(frames)`` pages of ``fd`` from ``fd_offset`` straight into ``frames`` (frames
    no VMO owns yet, so nothing can see them while the read runs). Bytes past the end of the
    file become zeros. Returns the bytes read."""
    length = len(frames) * PAGE_SIZE
    views = _frame_views(pmm, frames, 0, length)
    got = _vectored_io(os.preadv, fd, views, fd_offset)
    if got < length:
        _zero_views_from(views, got)
    return got


def fd_error_status(fd: int, e: OSError) -> Status:
    """The status for a failed read or write of ``fd``: a descriptor that is not open is a bad
    handle; one open without the right (O_WRONLY for a read, O_RDONLY for a write) is access
    denied; a full disk is no space; anything else is an I/O error."""
    if e.errno == errno.EBADF:
        try:
            os.fstat(fd)
        except OSError:
            return Status.ERR_BAD_HANDLE
        return Status.ERR_ACCESS_DENIED
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return Status.ERR_NO_SPACE
    return Status.ERR_IO


def _zero_views_from(views: list[memoryview], skip: int) -> None:
    for v in views:
        if skip >= len(v):
            skip -= len(v)
            continue
        v[skip:] = bytes(len(v) - skip)
        skip = 0


def _scatter(pmm: PhysicalMemory, frames: list[int], skip: int, data: memoryview) -> None:
    """Copy ``data`` into ``frames`` starting at byte ``skip`` of the first frame."""
    if pmm.coherence is not None:
        pmm.coherence.before_write(frames)
    physmap = pmm.physmap
    length = len(data)
    for i, f, count in _frame_runs(frames):
        run_start = i * PAGE_SIZE - skip
        lo = max(0, run_start)
        hi = min(length, run_start + count * PAGE_SIZE)
        if lo < hi:
            base = f * PAGE_SIZE + (lo - run_start)
            physmap[base: base + (hi - lo)] = data[lo:hi]


__all__ = [
    "ABSENT",
    "CowPages",
    "DiscardableState",
    "FrameState",
    "Hierarchy",
    "KernelState",
    "NeedPages",
    "RangeChangeOp",
    "fd_error_status",
    "fill_frames_from_fd",
]
