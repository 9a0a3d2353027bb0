"""What the explorer draws: a JSON-ready picture of a kernel at one moment.

`kernel_state(k)` walks every clone tree under its lock and returns plain dicts and lists:
each node with its window onto its parent, its page list (frame, split bits, dirty state,
pins, zero markers) and the pages charged to it; the arena's frames; every open VMO. The page
(`vmo/explore/static`) lays it out and draws it as SVG. Long page lists are cut at
``max_pages`` entries per node (the rest is counted), so that a big VMO cannot make the
picture unbounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmo.page_list import MARKER
from vmo.pmm import PAGE_SIZE, SPLIT_LEFT, SPLIT_RIGHT, DirtyState

if TYPE_CHECKING:
    from vmo.cow_pages import CowPages
    from vmo.kernel import Kernel

MAX_PAGES_SHOWN = 64
DIRTY_NAMES = {int(s): s.name.lower() for s in DirtyState}


def _node(node: CowPages, max_pages: int) -> dict[str, Any]:
    pmm = node.pmm
    ref = node.paged_ref
    pages: list[dict[str, Any]] = []
    total = 0
    for off, v in node.page_list.items():
        total += 1
        if len(pages) >= max_pages:
            continue
        if v == MARKER:
            pages.append({"off": off, "marker": True})
            continue
        split = pmm.split[v]
        pages.append({
            "off": off, "frame": v,
            "split": ("L" if split & SPLIT_LEFT else "") + ("R" if split & SPLIT_RIGHT else ""),
            "dirty": DIRTY_NAMES.get(pmm.dirty[v], "?") if pmm.dirty[v] else "",
            "pinned": int(pmm.pin_count[v]),
        })
    return {
        "id": node.id,
        "parent": node.parent.id if node.parent is not None else 0,
        "children": [c.id for c in node.children],
        "kind": "hidden" if node.hidden else ("slice" if node.is_slice else "vmo"),
        "koid": ref.koid if ref is not None else 0,
        "name": ref._name if ref is not None else "",
        "size": node.size,
        "parent_offset": node.parent_offset,
        "parent_start_limit": node.parent_start_limit,
        "parent_limit": node.parent_limit,
        "pager": node.page_source is not None,
        "discardable": node.discardable_state.name.lower() if node.discardable else "",
        "attribution": node.page_attribution_user_id,
        "committed": node.committed_pages_locked() if not node.hidden and ref is not None
        else 0,
        "pages": pages,
        "more_pages": total - len(pages),
    }


def kernel_state(k: Kernel, max_pages: int = MAX_PAGES_SHOWN) -> dict[str, Any]:
    """The picture of ``k`` (see the module docstring). Trees are listed oldest root first;
    nodes of a tree parent before child, children in order (left before right)."""
    trees: list[list[dict[str, Any]]] = []
    if k.closed:
        return {"trees": [], "frames": {}, "vmos": [], "page_size": PAGE_SIZE, "closed": True}
    for hier in sorted(k.hierarchies(), key=lambda h: h.root.id if h.root else 0):
        with hier.lock:
            if hier.root is None:
                continue
            trees.append([_node(n, max_pages) for n in hier.root.walk_subtree()])
    stats = k.memory_stats()
    vmos = []
    for v in k.live_vmos():
        with v._hier.lock:
            if v.closed:
                continue
            vmos.append({"koid": v.koid, "name": v.name, "node": v.cow.id,
                         "size": v.cow.size, "parent_koid": v.get_info().parent_koid})
    return {
        "trees": trees,
        "frames": {"total": stats.total_pages, "free": stats.free_pages,
                   "used": stats.vmo_pages, "unreachable": stats.unreachable_pages,
                   "pinned": stats.pinned_pages},
        "vmos": vmos,
        "page_size": PAGE_SIZE,
        "closed": False,
    }
