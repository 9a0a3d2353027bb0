"""The sparse page list of one VmCowPages node: page offset to page frame or zero marker.

Like Zircon's ``VmPageList`` the list is made of nodes of ``NODE_PAGES`` slots, keyed by the
node's first page offset in a ``SortedDict``. A slot is an int: ``EMPTY`` (0, nothing here: look
at the parent, or ask the page source), ``MARKER`` (-1, "zero here, do not look further") or a
frame number (>= 1). Range walks visit nodes, not offsets, so their cost follows the number of
committed entries, not the size of the VMO; point lookups are one dict lookup.

Offsets here are page indices, not bytes. Each node is an ``array('q')`` of ``NODE_PAGES`` slots
followed by one extra int, the count of non-empty slots, so that an emptied node can be dropped
without scanning it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

from sortedcontainers import SortedDict

NODE_PAGES = 16
_SHIFT = 4
_MASK = NODE_PAGES - 1
EMPTY = 0
MARKER = -1


_EMPTY_NODE = array("q", bytes(8 * (NODE_PAGES + 1)))


def _new_node() -> array[int]:
    # An array of machine ints, not a list: frame numbers above 256 would otherwise each be a
    # separate 28-byte int object kept alive by the list.
    return array("q", _EMPTY_NODE)


class PageList:
    __slots__ = ("_nodes", "_entries")

    def __init__(self) -> None:
        self._nodes: SortedDict = SortedDict()
        self._entries = 0

    # -- point operations ---------------------------------------------------------------------

    def get(self, off: int) -> int:
        node = self._nodes.get(off >> _SHIFT)
        return EMPTY if node is None else node[off & _MASK]

    def set(self, off: int, value: int) -> int:
        """Store a frame or MARKER at ``off``; returns what was there."""
        assert value != EMPTY
        key = off >> _SHIFT
        node = self._nodes.get(key)
        if node is None:
            node = _new_node()
            self._nodes[key] = node
        i = off & _MASK
        old: int = node[i]
        if old == EMPTY:
            node[NODE_PAGES] += 1
            self._entries += 1
        node[i] = value
        return old

    def remove(self, off: int) -> int:
        """Empty the slot at ``off``; returns what was there."""
        key = off >> _SHIFT
        node = self._nodes.get(key)
        if node is None:
            return EMPTY
        i = off & _MASK
        old: int = node[i]
        if old != EMPTY:
            node[i] = EMPTY
            node[NODE_PAGES] -= 1
            self._entries -= 1
            if node[NODE_PAGES] == 0:
                del self._nodes[key]
        return old

    # -- range walks ----------------------------------------------------------------------------

    def items(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """Non-empty slots ``(offset, value)`` with ``start <= offset < end``, ascending.

        Mutating the list while iterating is allowed for slots already visited.
        """
        nodes = self._nodes
        first = start >> _SHIFT
        last = None if end is None else (end - 1) >> _SHIFT
        if end is not None and end <= start:
            return
        for key in list(nodes.irange(first, last)):
            node = nodes.get(key)
            if node is None:
                continue
            base = key << _SHIFT
            lo = start - base if base < start else 0
            hi = NODE_PAGES if end is None or end - base >= NODE_PAGES else end - base
            for i in range(lo, hi):
                v = node[i]
                if v != EMPTY:
                    yield base + i, v

    def pages(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """Like `items` but frames only (markers skipped)."""
        for off, v in self.items(start, end):
            if v > 0:
                yield off, v

    def dense(self, start: int, end: int) -> list[int]:
        """The slot values of ``[start, end)`` as a list (EMPTY where nothing is)."""
        out = [EMPTY] * (end - start)
        nodes = self._nodes
        if not nodes or end <= start:
            return out
        for key in nodes.irange(start >> _SHIFT, (end - 1) >> _SHIFT):
            node = nodes[key]
            base = key << _SHIFT
            lo = max(start, base)
            hi = min(end, base + NODE_PAGES)
            out[lo - start: hi - start] = node[lo - base: hi - base]
        return out

    def any_in_range(self, start: int, end: int) -> bool:
        return self.first_in_range(start, end) is not None

    def first_in_range(self, start: int, end: int) -> tuple[int, int] | None:
        for item in self.items(start, end):
            return item
        return None

    def take_range(self, start: int, end: int | None = None) -> list[tuple[int, int]]:
        """Remove and return every non-empty slot in ``[start, end)``."""
        taken = list(self.items(start, end))
        for off, _ in taken:
            self.remove(off)
        return taken

    def set_run(self, start: int, values: list[int]) -> None:
        """Store ``values[i]`` at ``start + i`` for each non-empty value (bulk `set`)."""
        for i, v in enumerate(values):
            if v != EMPTY:
                self.set(start + i, v)

    def fill_empty_run(self, start: int, values: list[int]) -> None:
        """Store ``values[i]`` at ``start + i`` where those slots are empty (fast `set_run`).

        The caller guarantees the slots are empty and the values non-empty: each node is
        filled with one slice assignment.
        """
        nodes = self._nodes
        i, n = 0, len(values)
        while i < n:
            off = start + i
            key = off >> _SHIFT
            node = nodes.get(key)
            if node is None:
                node = _new_node()
                nodes[key] = node
            lo = off & _MASK
            take = min(NODE_PAGES - lo, n - i)
            node[lo:lo + take] = array("q", values[i:i + take])
            node[NODE_PAGES] += take
            self._entries += take
            i += take

    def clear_range(self, start: int, end: int) -> list[int]:
        """Empty every slot of ``[start, end)``; returns the frames (not markers) removed.

        Whole nodes are dropped at once and partial ones cleared by slice."""
        nodes = self._nodes
        frames: list[int] = []
        if end <= start or not nodes:
            return frames
        for key in list(nodes.irange(start >> _SHIFT, (end - 1) >> _SHIFT)):
            node = nodes[key]
            base = key << _SHIFT
            lo, hi = max(start, base) - base, min(end, base + NODE_PAGES) - base
            part = node[lo:hi]
            removed = sum(1 for v in part if v != EMPTY)
            frames.extend(v for v in part if v > 0)
            if removed == node[NODE_PAGES]:
                del nodes[key]
            else:
                node[lo:hi] = array("q", bytes(8 * (hi - lo)))
                node[NODE_PAGES] -= removed
            self._entries -= removed
        return frames

    # -- whole-list properties ------------------------------------------------------------------

    def __len__(self) -> int:
        return self._entries

    def is_empty(self) -> bool:
        return self._entries == 0

    def count_pages(self, start: int = 0, end: int | None = None) -> int:
        if start == 0 and end is None:
            return sum(1 for _ in self.pages())
        return sum(1 for _ in self.pages(start, end))

    def last_offset(self) -> int | None:
        if not self._nodes:
            return None
        key = self._nodes.keys()[-1]
        node = self._nodes[key]
        for i in range(NODE_PAGES - 1, -1, -1):
            if node[i] != EMPTY:
                return (key << _SHIFT) + i
        return None

    def node_count(self) -> int:
        return len(self._nodes)

    def metadata_bytes(self) -> int:
        """Approximate Python-side bytes held by this list (nodes and their index)."""
        import sys

        # The node array, its key int, and its share of the SortedDict (dict slot, key list,
        # sorted-list slot).
        per_node = sys.getsizeof(_new_node()) + 28 + 3 * 8 + 40
        return len(self._nodes) * per_node
