"""Validators, dumps and pictures of hierarchies.

`validate` ports the seed's ``DebugValidatePageSplitsLocked`` and ``DebugValidateBacklinksLocked``
and adds what a Python model can afford to check after every step: frame accounting (every
frame free or held by exactly one page-list slot), attribution sums, limits, discardable lists,
pin counts and dirty states.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from vmo.cow_pages import ABSENT, NO_SUPPLY_ZERO, CowPages, DiscardableState, Hierarchy
from vmo.errors import InvariantError
from vmo.page_list import MARKER
from vmo.pmm import PAGE_SIZE, SPLIT_LEFT, SPLIT_RIGHT, DirtyState, FrameState, PageQueue

if TYPE_CHECKING:
    from vmo.kernel import Kernel
    from vmo.vm_object import Vmo

__all__ = ["validate", "ValidateCache", "dump", "to_dot", "ABSENT"]


def _fail(node: CowPages | None, off: int | None, what: str) -> InvariantError:
    where = f"node #{node.id}" if node is not None else "kernel"
    if off is not None:
        where += f" offset {off * PAGE_SIZE:#x}"
    return InvariantError(f"{where}: {what}")


class ValidateCache:
    """What `validate` found for each hierarchy, by the hierarchy's ``generation``.

    Given to `validate`, a hierarchy whose generation has not changed since the cache saw it
    valid is not walked again: its frames, attribution and uncharged pages are taken from the
    cache into the kernel-wide checks (frame accounting, attribution sums, discardable lists,
    live VMOs), which always run in full. For fuzzers that validate after every step, most of
    which touch one tree; they still call `validate` without the cache every few steps, since
    the cache trusts that whatever changes a tree bumps its generation."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Hierarchy, int, dict[int, tuple[CowPages, int]],
                                       dict[CowPages, int], int]] = {}
        self.hits = 0
        self.misses = 0

    def _get(self, hier: Hierarchy) -> tuple[dict[int, tuple[CowPages, int]],
                                             dict[CowPages, int], int] | None:
        entry = self._entries.get(id(hier))
        if entry is None or entry[0] is not hier or entry[1] != hier.generation:
            return None
        return entry[2], entry[3], entry[4]

    def _put(self, hier: Hierarchy, frames: dict[int, tuple[CowPages, int]],
             attribution: dict[CowPages, int], uncharged: int) -> None:
        self._entries[id(hier)] = (hier, hier.generation, frames, attribution, uncharged)

    def _keep_only(self, hiers: list[Hierarchy]) -> None:
        live = {id(h) for h in hiers}
        for key in [k for k in self._entries if k not in live]:
            del self._entries[key]


def validate(k: Kernel, cache: ValidateCache | None = None) -> None:
    """Check every invariant of every hierarchy of ``k``; raise `InvariantError` if one breaks.

    With a `ValidateCache`, hierarchies that did not change since the cache last saw them
    valid are not walked again (the kernel-wide checks still run in full)."""
    if k.closed:
        return
    pmm = k.pmm
    seen_frames: dict[int, tuple[CowPages, int]] = {}
    live_vmos = k.live_vmos()
    total_attributed = 0
    uncharged = 0
    hierarchies = k.hierarchies()
    for hier in hierarchies:
        with hier.lock:
            cached = cache._get(hier) if cache is not None else None
            if cached is not None:
                cache.hits += 1  # type: ignore[union-attr]
                frames, attribution, hier_uncharged = cached
                _add_frames(frames, seen_frames)
                uncharged += hier_uncharged
                total_attributed += sum(attribution.values())
                continue
            want: Counter[CowPages] = Counter()
            frames = seen_frames if cache is None else {}
            hier_uncharged = _validate_hierarchy(k, hier, frames, want)
            if cache is not None:
                cache.misses += 1
                _add_frames(frames, seen_frames)
            uncharged += hier_uncharged
            attribution = k._attribution_locked(hier)
            total_attributed += sum(attribution.values())
            for node, count in attribution.items():
                if node.paged_ref is None or node.paged_ref.closed:
                    raise _fail(node, None, f"{count} pages attributed to a node with no live VMO")
            # What VmoInfo.committed_bytes reports (the core walks ranges, as the seed does)
            # against the same rule applied page by page.
            if attribution != {n: c for n, c in want.items() if c}:
                diff = sorted((n.id, attribution.get(n, 0), want.get(n, 0))
                              for n in set(attribution) | set(want)
                              if attribution.get(n, 0) != want.get(n, 0))
                raise _fail(None, None, "committed pages differ from the seed's rule page by "
                                        f"page (node, committed, by the rule): {diff}")
            if cache is not None:
                cache._put(hier, frames, attribution, hier_uncharged)
    if cache is not None:
        cache._keep_only(hierarchies)
    # Frame accounting: every frame the allocator thinks is in use is in exactly one slot.
    used = pmm.used_frames
    if len(seen_frames) != used:
        in_use = [f for f in range(1, pmm.total_frames)
                  if pmm.state[f] in (FrameState.OBJECT, FrameState.ALLOC)]
        leaked = sorted(set(in_use) - set(seen_frames))[:8]
        raise _fail(None, None, f"{used} frames in use but {len(seen_frames)} held by page lists; "
                                f"leaked frames (first 8): {leaked}")
    # Every frame is charged to one live VMO, or is one of the pages the seed charges to
    # nobody (memory_stats().unreachable_pages).
    if total_attributed + uncharged != len(seen_frames):
        raise _fail(None, None, f"attribution sums to {total_attributed} pages and "
                                f"{uncharged} are charged to nobody, but page lists hold "
                                f"{len(seen_frames)} frames")
    # Every live VMO stands for a node of a live hierarchy.
    for v in live_vmos:
        if v.cow.paged_ref is not v:
            raise _fail(v.cow, None, f"VMO koid {v.koid} points at a node that does not point back")
    _validate_discardable_lists(k)


def _add_frames(frames: dict[int, tuple[CowPages, int]],
                seen_frames: dict[int, tuple[CowPages, int]]) -> None:
    """Add one tree's frames to those of the trees checked before: a frame held twice is a
    failure."""
    for frame, (node, off) in frames.items():
        if frame in seen_frames:
            other, o_off = seen_frames[frame]
            raise _fail(node, off, f"frame {frame} also held by node #{other.id} "
                                   f"at {o_off * PAGE_SIZE:#x}")
        seen_frames[frame] = (node, off)


def _validate_hierarchy(k: Kernel, hier: Hierarchy,
                        seen_frames: dict[int, tuple[CowPages, int]],
                        charged: Counter[CowPages]) -> int:
    """Check one tree. Adds to ``charged`` the pages each live VMO's node is charged for by
    the seed's rule, worked out page by page; returns the pages charged to nobody."""
    root = hier.root
    assert root is not None
    if root.parent is not None:
        raise _fail(root, None, "hierarchy root has a parent")
    pmm = k.pmm
    uncharged = 0
    for node in root.walk_subtree():
        if node.hier is not hier:
            raise _fail(node, None, "node belongs to another hierarchy")
        for child in node.children:
            if child.parent is not node:
                raise _fail(child, None, f"parent pointer is not node #{node.id}")
        if node.hidden:
            if len(node.children) != 2:
                raise _fail(node, None, f"hidden node has {len(node.children)} children")
            if node.paged_ref is not None:
                raise _fail(node, None, "hidden node still stands for a VMO")
            # The one exception: the root of an anonymous source's hierarchy (swap), which
            # keeps its source when a snapshot hides it, so that the content the source holds
            # for it can still be supplied (`CowPages.acts_anonymous`).
            if node.page_source is not None and (node.parent is not None
                                                 or node.anonymous_source() is None):
                raise _fail(node, None, "hidden node has a page source")
        elif node.paged_ref is None and not node.children:
            raise _fail(node, None, "closed node with no children was not freed")
        if node.is_slice:
            if not node.page_list.is_empty():
                raise _fail(node, None, "slice holds pages")
            if node.parent is None or node.parent.is_slice or node.parent.hidden:
                raise _fail(node, None, "slice parent is not a visible non-slice node")
            if node.parent_limit and node.parent_offset + node.parent_limit > node.parent.size:
                raise _fail(node, None, "slice sees past its parent")
        # Limits.
        if not (0 <= node.parent_start_limit <= node.parent_limit):
            raise _fail(node, None, f"limits start {node.parent_start_limit} > limit "
                                    f"{node.parent_limit}")
        if node.parent is None:
            # A child merged into the root keeps its old parent_offset (as in Zircon); only
            # its window must be empty.
            if node.parent_limit or node.parent_start_limit:
                raise _fail(node, None, "root with a parent window")
        else:
            if node.parent_limit > node.size:
                raise _fail(node, None, f"parent_limit {node.parent_limit} > size {node.size}")
            if not node.parent.hidden and node.parent_start_limit:
                raise _fail(node, None, "parent_start_limit on a child of a visible node")
            if not node.hidden and node.parent_start_limit:
                raise _fail(node, None, "visible node with a parent_start_limit")
            if node.root_parent_offset != node.parent.root_parent_offset + node.parent_offset:
                raise _fail(node, None, "root_parent_offset is not the sum of parent offsets")
        if node.discardable and node.children:
            raise _fail(node, None, "discardable VMO has children")
        # Page list: bounds, backlinks, frames held once, split bits only in hidden nodes.
        pinned = 0
        for off, v in node.page_list.items():
            if off >= node.size and not node.hidden:
                raise _fail(node, off, f"entry past the end ({node.size} pages)")
            if v == MARKER:
                continue
            if v in seen_frames:
                other, o_off = seen_frames[v]
                raise _fail(node, off, f"frame {v} also held by node #{other.id} at "
                                       f"{o_off * PAGE_SIZE:#x}")
            seen_frames[v] = (node, off)
            if pmm.state[v] != FrameState.OBJECT:
                raise _fail(node, off, f"frame {v} in state {FrameState(pmm.state[v]).name}")
            if pmm.owner[v] is not node or pmm.offset[v] != off:
                owner = pmm.owner[v]
                raise _fail(node, off, f"frame {v} backlink points at "
                                       f"{'#' + str(owner.id) if owner else None} "
                                       f"offset {pmm.offset[v]}")
            split = pmm.split[v]
            if split and not node.hidden:
                raise _fail(node, off, f"split bits {split} on a page of a visible node")
            if split == SPLIT_LEFT | SPLIT_RIGHT:
                raise _fail(node, off, "page split both ways is visible to nobody but kept")
            if pmm.pin_count[v]:
                pinned += 1
                if pmm.queue[v] != PageQueue.WIRED:
                    raise _fail(node, off, "pinned page not in the wired queue")
            _validate_dirty(node, off, v)
        if pinned != node.pinned_pages:
            raise _fail(node, None, f"pinned_pages {node.pinned_pages} but {pinned} pinned frames")
        if node.hidden:
            uncharged += _validate_page_splits(node, charged)
        elif not node.page_list.is_empty():
            owner = live_owner(node)
            if owner is not None:
                charged[owner] += node.page_list.count_pages()
        _validate_discardable(node)
        if node.page_source is None and node.supply_zero_offset != NO_SUPPLY_ZERO:
            raise _fail(node, None, "supply_zero_offset set without a page source")
        if node.paged_ref is not None and node.page_attribution_user_id != node.paged_ref.koid:
            raise _fail(node, None, f"attribution id {node.page_attribution_user_id} is not "
                                    f"the koid {node.paged_ref.koid} of its VMO")
    return uncharged


def _validate_dirty(node: CowPages, off: int, frame: int) -> None:
    pmm = node.pmm
    dirty = pmm.dirty[frame]
    if not node.is_source_preserving():
        if dirty != DirtyState.UNTRACKED:
            raise _fail(node, off, f"dirty state {DirtyState(dirty).name} on an untracked page")
        return
    if dirty == DirtyState.UNTRACKED:
        raise _fail(node, off, "page of a pager-backed root without a dirty state")
    if off >= node.supply_zero_offset and dirty == DirtyState.CLEAN:
        raise _fail(node, off, "clean page beyond supply_zero_offset")
    if pmm.pin_count[frame] == 0:
        want = ((PageQueue.PAGER_BACKED, PageQueue.PAGER_BACKED_INACTIVE)
                if dirty == DirtyState.CLEAN else (PageQueue.PAGER_BACKED_DIRTY,))
        if pmm.queue[frame] not in want:
            raise _fail(node, off, f"{DirtyState(dirty).name} page in queue "
                                   f"{PageQueue(pmm.queue[frame]).name}")


def _sees(node: CowPages, off: int) -> bool:
    return node.parent_start_limit <= off < node.parent_limit


def _leaf_sees(node: CowPages, off: int, *, partial_counts: bool = False) -> bool:
    """Can some leaf below ``node`` (inclusive) see its parent's content at ``off``?

    The leaf search the split bits and limits stand in for. A loop with an explicit stack
    that tries visible children first, so that a fan of snapshots answers at once. With
    ``partial_counts`` a hidden node that did a partial release counts as seeing (seed:
    ``DebugValidatePageSplitsLocked`` accepts that a merge may still find such a page)."""
    stack = [(node, off)]
    while stack:
        cur, cur_off = stack.pop()
        if not _sees(cur, cur_off) or cur.page_list.get(cur_off) != 0:
            continue
        if not cur.hidden or (partial_counts and cur.partial_cow_release):
            return True
        # Hidden children last onto the stack come off first: push hidden ones first.
        for child in sorted(cur.children, key=lambda c: not c.hidden):
            stack.append((child, cur_off - child.parent_offset))
    return False


def _validate_page_splits(node: CowPages, charged: Counter[CowPages]) -> int:
    """Seed: ``DebugValidatePageSplitsLocked``, and the cross-check of the mechanism: for
    every page of a hidden node, what the split bits and the limits say (the node's
    `_is_uni_accessible_locked`) agrees with which leaves really see it, and the seed's
    attribution charges it to at most one leaf. Adds the charged pages to ``charged`` and
    returns the pages charged to nobody: seen by no leaf (the seed keeps such pages until a
    merge or close), or, after a partial release, seen only where the seed's limits say the
    other side sees them."""
    pmm = node.pmm
    left, right = node.children
    uncharged = 0
    for off, frame in node.page_list.pages():
        split = pmm.split[frame]
        left_sees = _leaf_sees(left, off - left.parent_offset)
        right_sees = _leaf_sees(right, off - right.parent_offset)
        if split:
            forked, other = (left, right) if split == SPLIT_LEFT else (right, left)
            if left_sees if split == SPLIT_LEFT else right_sees:
                raise _fail(node, off, f"page split toward node #{forked.id} is still visible "
                                       f"there")
            if not node.partial_cow_release and not _leaf_sees(
                    other, off - other.parent_offset, partial_counts=True):
                raise _fail(node, off, f"split page is visible to no leaf under node "
                                       f"#{other.id}")
        elif left_sees and right_sees and node._is_uni_accessible_locked(frame, off):
            raise _fail(node, off, "both sides see the page but the limits call it "
                                   "uni-accessible: a fork would migrate it from under one side")
        leaves = seed_charged_leaves(node, off, frame)
        if len(leaves) > 1:
            raise _fail(node, off, f"charged to {len(leaves)} VMOs: nodes "
                                   f"{[n.id for n in leaves]}")
        owner = live_owner(leaves[0]) if leaves else None
        if owner is not None:
            charged[owner] += 1
            continue
        uncharged += 1
        if (left_sees or right_sees) and not node.partial_cow_release:
            raise _fail(node, off, "a leaf sees the page but it is charged to no VMO")
    return uncharged


def seed_charged_leaves(hidden: CowPages, off: int, frame: int) -> list[CowPages]:
    """The leaves whose ``committed_bytes`` count the page at ``off`` of ``hidden``, by the
    seed's rule (``CountAttributedAncestorPagesLocked``) applied to one offset at a time.

    A leaf's walk reaches a hidden ancestor at an offset when the offset is a gap in every
    node on the way and within each one's ``parent_limit``, and at every level on the way up
    it is followed (the node it walks into carries the walker's id, or the walker's sibling
    there cannot see the offset). Where it reaches the page, the page is the walker's if the
    holder carries the walker's id, the page is split, or the walker's sibling there cannot
    see it. A loop with an explicit stack, from the page down."""
    split = hidden.pmm.split[frame]

    def sibling_sees(parent: CowPages, child: CowPages, p_off: int) -> bool:
        sib = parent.children[1] if parent.children[0] is child else parent.children[0]
        return (sib.parent_offset + sib.parent_start_limit <= p_off
                < sib.parent_offset + sib.parent_limit)

    out: list[CowPages] = []
    stack: list[tuple[CowPages, int]] = []
    for child in hidden.children:
        c_off = off - child.parent_offset
        if not 0 <= c_off < child.parent_limit:
            continue
        if (hidden.page_attribution_user_id == child.page_attribution_user_id or split
                or not sibling_sees(hidden, child, off)):
            stack.append((child, c_off))
    while stack:
        cur, cur_off = stack.pop()
        if cur.page_list.get(cur_off) != 0:
            continue
        if not cur.hidden:
            if cur_off < cur.size:
                out.append(cur)
            continue
        for child in cur.children:
            c_off = cur_off - child.parent_offset
            if not 0 <= c_off < child.parent_limit:
                continue
            if (cur.page_attribution_user_id == child.page_attribution_user_id
                    or not sibling_sees(cur, child, cur_off)):
                stack.append((child, c_off))
    return out


def live_owner(node: CowPages) -> CowPages | None:
    """The node whose live VMO the pages charged to a visible node count for: itself, or
    the first live node below it (`CowPages.attribution_target`, re-derived here)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if not n.hidden and n.paged_ref is not None and not n.paged_ref.closed:
            return n
        stack.extend(reversed(n.children))
    return None


def _validate_discardable(node: CowPages) -> None:
    st = node.discardable_state
    if not node.discardable:
        if st != DiscardableState.UNSET or node.lock_count:
            raise _fail(node, None, "discardable state on a non-discardable node")
        return
    if st == DiscardableState.UNRECLAIMABLE and node.lock_count == 0:
        raise _fail(node, None, "locked state with lock count 0")
    if st in (DiscardableState.RECLAIMABLE, DiscardableState.DISCARDED) and node.lock_count:
        raise _fail(node, None, f"{st.name} with lock count {node.lock_count}")
    if st == DiscardableState.UNSET and node.lock_count:
        raise _fail(node, None, "never-locked state with a lock count")
    if st == DiscardableState.DISCARDED and node.page_list.count_pages():
        raise _fail(node, None, "discarded VMO still holds pages")


def _validate_discardable_lists(k: Kernel) -> None:
    st = k.state
    with st.discardable_lock:
        rec = list(st.reclaim_candidates)
        non = list(st.non_reclaim_candidates)
    for cow in rec:
        if cow.discardable_state != DiscardableState.RECLAIMABLE:
            raise _fail(cow, None, f"on the reclaim list in state {cow.discardable_state.name}")
        if cow in st.non_reclaim_candidates:
            raise _fail(cow, None, "on both discardable lists")
    for cow in non:
        if cow.discardable_state not in (DiscardableState.UNRECLAIMABLE,
                                         DiscardableState.DISCARDED):
            raise _fail(cow, None, f"on the non-reclaim list in state {cow.discardable_state.name}")
    times = [c.last_unlock_time for c in rec]
    if times != sorted(times):
        raise _fail(None, None, "reclaim candidates are not in unlock order")
    for v in k.live_vmos():
        cow = v.cow
        if cow.discardable and cow.discardable_state != DiscardableState.UNSET:
            listed = cow in st.reclaim_candidates or cow in st.non_reclaim_candidates
            if not listed:
                raise _fail(cow, None, f"{cow.discardable_state.name} but on no list")


# ---------------------------------------------------------------------------- dumps


def _nodes_of(target: Any) -> list[tuple[Hierarchy, CowPages]]:
    from vmo.kernel import Kernel

    if isinstance(target, Kernel):
        return [(h, h.root) for h in target.hierarchies() if h.root is not None]
    cow = target.cow
    root = cow.hier.root
    return [(cow.hier, root)] if root is not None else []


def _label(node: CowPages) -> str:
    ref: Vmo | None = node.paged_ref
    if node.hidden:
        kind = "hidden"
    elif node.is_slice:
        kind = "slice"
    else:
        kind = "vmo"
    who = f"koid {ref.koid}" if ref is not None else ("closed" if not node.hidden else "")
    name = f" {ref._name!r}" if ref is not None and ref._name else ""
    return f"#{node.id} {kind} {who}{name}".rstrip()


def _window(node: CowPages) -> str:
    if node.parent is None:
        return ""
    p = PAGE_SIZE
    return (f" offset {node.parent_offset * p:#x} start_limit {node.parent_start_limit * p:#x}"
            f" limit {node.parent_limit * p:#x}")


def _window_text(node: CowPages) -> str:
    """The part of the parent a child sees, in words: its own offsets
    ``[parent_start_limit, parent_limit)`` show the parent's content from ``parent_offset`` on."""
    p = PAGE_SIZE
    start, limit = node.parent_start_limit * p, node.parent_limit * p
    if start >= limit:
        return "sees nothing of its parent"
    text = f"parent window {start:#x}..{limit:#x}"
    if node.parent_offset:
        text += f", parent offset {node.parent_offset * p:#x}"
    return text


def _slot_text(node: CowPages, off: int, v: int) -> str:
    if v == MARKER:
        return f"{off * PAGE_SIZE:#x}: zero marker"
    pmm = node.pmm
    split = pmm.split[v]
    bits = ("L" if split & SPLIT_LEFT else ".") + ("R" if split & SPLIT_RIGHT else ".")
    extra = []
    if pmm.dirty[v]:
        extra.append(DirtyState(pmm.dirty[v]).name.lower())
    if pmm.pin_count[v]:
        extra.append(f"pinned x{pmm.pin_count[v]}")
    more = f" {' '.join(extra)}" if extra else ""
    return f"{off * PAGE_SIZE:#x}: frame {v} ({bits}){more}"


def dump(target: Any, *, max_pages: int = 64) -> str:
    """The hierarchy of a `Vmo` (or of every VMO of a `Kernel`) as an indented tree."""
    lines: list[str] = []
    for hier, root in _nodes_of(target):
        with hier.lock:
            stack: list[tuple[CowPages, int]] = [(root, 0)]
            while stack:
                node, depth = stack.pop()
                pad = "  " * depth
                extras = []
                if node.page_source is not None:
                    extras.append(f"pager supply_zero {node.supply_zero_offset * PAGE_SIZE:#x}"
                                  if node.supply_zero_offset != NO_SUPPLY_ZERO else "pager")
                if node.discardable:
                    extras.append(f"discardable {node.discardable_state.name.lower()}"
                                  f" locks={node.lock_count}")
                if node.partial_cow_release:
                    extras.append("partial_cow_release")
                tail = f" [{', '.join(extras)}]" if extras else ""
                lines.append(f"{pad}{_label(node)} size {node.size * PAGE_SIZE:#x}"
                             f"{_window(node)} pages {node.page_list.count_pages()}{tail}")
                for i, (off, v) in enumerate(node.page_list.items()):
                    if i >= max_pages:
                        lines.append(f"{pad}    ... {len(node.page_list) - max_pages} more")
                        break
                    lines.append(f"{pad}    {_slot_text(node, off, v)}")
                for child in reversed(node.children):
                    stack.append((child, depth + 1))
    return "\n".join(lines)


def to_dot(target: Any, *, max_pages: int = 16) -> str:
    """The same tree as a Graphviz DOT graph (render with ``dot -Tsvg``)."""
    out = ["digraph vmo {", '  node [shape=record, fontname="monospace"];']
    for hier, root in _nodes_of(target):
        with hier.lock:
            for node in root.walk_subtree():
                slots = []
                for i, (off, v) in enumerate(node.page_list.items()):
                    if i >= max_pages:
                        slots.append("...")
                        break
                    slots.append(_slot_text(node, off, v).replace("(", "\\(").replace(")", "\\)"))
                title = _label(node) + f"\\nsize {node.size * PAGE_SIZE:#x}"
                if node.parent is not None:
                    title += "\\n" + _window_text(node)
                label = "{" + title + ("|" + "\\l".join(slots) + "\\l" if slots else "") + "}"
                label = label.replace('"', '\\"').replace("<", "\\<").replace(">", "\\>")
                style = ', style=dashed' if node.hidden else ""
                out.append(f'  n{node.id} [label="{label}"{style}];')
                for idx, child in enumerate(node.children):
                    edge = ""
                    if node.hidden:
                        edge = ' [label="L"]' if idx == 0 else ' [label="R"]'
                    out.append(f"  n{node.id} -> n{child.id}{edge};")
    out.append("}")
    return "\n".join(out)
