"""The sparse page list of one VmCowPages node: page offset to page frame or zero marker.

Like Zircon's ``VmPageList`` the list is made of nodes of ``NODE_PAGES`` slots, keyed by the
node's index (first page offset // ``NODE_PAGES``) in a dict. A slot is an int: ``EMPTY`` (0,
nothing here: look at the parent, or ask the page source), ``MARKER`` (-1, "zero here, do not
look further") or a frame number (>= 1). Point lookups are one dict lookup.

Range walks visit nodes, not offsets, so their cost follows the number of committed entries,
not the size of the VMO. A walk over a range spanning fewer node slots than the list has nodes
probes each slot's key in the dict; a wider walk uses the sorted list of keys, kept as a cache
that is rebuilt only after a node was added or dropped. A sorted container (``SortedDict``)
would keep that order up to date on every change instead, at a cost of a few microseconds per
node created or dropped: that is what a supply of a large run pays, node after node, while
the walks that need the order over many nodes are rarer.

Offsets here are page indices, not bytes. Each node is an ``array('q')`` of ``NODE_PAGES`` slots
followed by one extra int, the count of non-empty slots, so that an emptied node can be dropped
without scanning it.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator

NODE_PAGES = 16
_SHIFT = 4
_MASK = NODE_PAGES - 1
#: For loops that look up one slot per level of a deep tree, where a method call per level is
#: the cost (`CowPages.find_initial_content_locked`): ``page_list._nodes.get(off >>
#: NODE_SHIFT)``, then ``node[off & NODE_MASK]``.
NODE_SHIFT = _SHIFT
NODE_MASK = _MASK
EMPTY = 0
MARKER = -1


_EMPTY_NODE = array("q", bytes(8 * (NODE_PAGES + 1)))


def _new_node() -> array[int]:
    # An array of machine ints, not a list: frame numbers above 256 would otherwise each be a
    # separate 28-byte int object kept alive by the list.
    return array("q", _EMPTY_NODE)


class PageList:
    __slots__ = ("_nodes", "_entries", "_sorted_keys")

    def __init__(self) -> None:
        self._nodes: dict[int, array[int]] = {}
        self._entries = 0
        # The node keys in ascending order; None once a node was added or dropped since.
        self._sorted_keys: list[int] | None = []

    def _keys_in(self, first: int, last: int | None) -> list[int]:
        """Keys of the nodes with ``first <= key <= last`` (no bound if None), ascending."""
        nodes = self._nodes
        if last is not None:
            if last < first:
                return []
            if last - first < len(nodes):
                return [k for k in range(first, last + 1) if k in nodes]
        keys = self._sorted_keys
        if keys is None:
            keys = self._sorted_keys = sorted(nodes)
        lo = bisect_left(keys, first)
        hi = len(keys) if last is None else bisect_right(keys, last, lo)
        return keys[lo:hi]

    def _add_node(self, key: int) -> array[int]:
        node = _new_node()
        self._nodes[key] = node
        self._sorted_keys = None
        return node

    def _drop_node(self, key: int) -> None:
        del self._nodes[key]
        self._sorted_keys = None

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
            node = self._add_node(key)
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
                self._drop_node(key)
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
        for key in self._keys_in(first, last):
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
        if end <= start:
            return []
        nodes = self._nodes
        key = start >> _SHIFT
        if (end - 1) >> _SHIFT == key:
            # Within one node (a fault, a small read or write): one slice, no walk.
            node = nodes.get(key)
            if node is None:
                return [EMPTY] * (end - start)
            lo = start & _MASK
            return node[lo:lo + end - start].tolist()
        out = [EMPTY] * (end - start)
        if not nodes:
            return out
        for key in self._keys_in(start >> _SHIFT, (end - 1) >> _SHIFT):
            node = nodes[key]
            base = key << _SHIFT
            lo = max(start, base)
            hi = min(end, base + NODE_PAGES)
            out[lo - start: hi - start] = node[lo - base: hi - base]
        return out

    def segments(self, start: int, end: int) -> list[tuple[int, array[int]]]:
        """``(offset, slots)`` for each run of adjacent nodes that hold something in
        ``[start, end)``, clipped to it: the slots as an ``array('q')`` (copied node by node
        at C speed, no int objects made). The cost follows the nodes, so a huge sparse range is
        cheap."""
        out: list[tuple[int, array[int]]] = []
        nodes = self._nodes
        if end <= start or not self._nodes:
            return out
        keys = self._keys_in(start >> _SHIFT, (end - 1) >> _SHIFT)
        i = 0
        while i < len(keys):
            j = i + 1
            while j < len(keys) and keys[j] == keys[j - 1] + 1:
                j += 1
            lo = max(start, keys[i] << _SHIFT)
            hi = min(end, (keys[j - 1] + 1) << _SHIFT)
            slots = array("q")
            for key in keys[i:j]:
                base = key << _SHIFT
                slots.extend(nodes[key][max(lo, base) - base:min(hi, base + NODE_PAGES) - base])
            out.append((lo, slots))
            i = j
        return out

    def is_empty_range(self, start: int, end: int) -> bool:
        """Nothing at all in ``[start, end)``? A node holds something or does not exist, so
        only the two nodes at the ends of the range need looking into."""
        if end <= start:
            return True
        keys = self._keys_in(start >> _SHIFT, (end - 1) >> _SHIFT)
        if len(keys) > 2:
            return False
        for key in keys:
            node = self._nodes[key]
            base = key << _SHIFT
            lo, hi = max(start, base) - base, min(end, base + NODE_PAGES) - base
            if node[lo:hi].count(EMPTY) != hi - lo:
                return False
        return True

    def is_full_range(self, start: int, end: int) -> bool:
        """Every slot of ``[start, end)`` holds a frame or a marker? Answered from the nodes'
        counts (the two end nodes looked into), without reading the slots out as ints."""
        if end <= start:
            return True
        first, last = start >> _SHIFT, (end - 1) >> _SHIFT
        nodes = self._nodes
        for key in range(first, last + 1):
            node = nodes.get(key)
            if node is None:
                return False
            if node[NODE_PAGES] == NODE_PAGES:
                continue
            base = key << _SHIFT
            lo, hi = max(start, base) - base, min(end, base + NODE_PAGES) - base
            if EMPTY in node[lo:hi]:
                return False
        return True

    def any_in_range(self, start: int, end: int) -> bool:
        return not self.is_empty_range(start, end)

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

    def fill_empty_run(self, start: int, values: list[int] | array[int]) -> None:
        """Store ``values[i]`` at ``start + i`` where those slots are empty (fast `set_run`).

        The caller guarantees the slots are empty and the values non-empty: each node is
        filled with one slice assignment, and a node the run covers whole is built in one step.
        """
        nodes = self._nodes
        # Converted once (unless it is an array already); each node takes a C-level slice.
        run = values if isinstance(values, array) else array("q", values)
        i, n = 0, len(values)
        added = False
        while i < n:
            off = start + i
            key = off >> _SHIFT
            lo = off & _MASK
            take = min(NODE_PAGES - lo, n - i)
            node = nodes.get(key)
            if node is None and take == NODE_PAGES:
                node = run[i:i + NODE_PAGES]
                node.append(NODE_PAGES)
                nodes[key] = node
                added = True
            else:
                if node is None:
                    node = nodes[key] = _new_node()
                    added = True
                node[lo:lo + take] = run[i:i + take]
                node[NODE_PAGES] += take
            i += take
        self._entries += n
        if added:
            self._sorted_keys = None

    def clear_range(self, start: int, end: int) -> list[int]:
        """Empty every slot of ``[start, end)``; returns the frames (not markers) removed.

        Whole nodes are dropped at once and partial ones cleared by slice."""
        removed = self._clear(start, end, None)
        return removed.tolist() if MARKER not in removed else [v for v in removed if v > 0]

    def take_dense(self, start: int, end: int) -> list[int]:
        """`dense` and `clear_range` in one pass: the slot values of ``[start, end)`` (EMPTY where
        nothing was), every slot emptied."""
        out = array("q", bytes(8 * max(0, end - start)))
        self._clear(start, end, out)
        return out.tolist()

    def _clear(self, start: int, end: int, out: array[int] | None) -> array[int]:
        """Empty ``[start, end)``. Returns the non-empty values removed (in ascending order of
        offset); with ``out`` (one slot per page of the range) also stores every value there."""
        nodes = self._nodes
        removed_values = array("q")
        if end <= start or not nodes:
            return removed_values
        dropped = False
        for key in self._keys_in(start >> _SHIFT, (end - 1) >> _SHIFT):
            node = nodes[key]
            base = key << _SHIFT
            lo, hi = max(start, base) - base, min(end, base + NODE_PAGES) - base
            part = node[lo:hi]
            if out is not None:
                out[base + lo - start: base + hi - start] = part
            count = node[NODE_PAGES]
            removed = hi - lo - part.count(EMPTY)
            if removed == hi - lo:
                removed_values.extend(part)
            elif removed:
                removed_values.extend([v for v in part if v != EMPTY])
            if removed == count:
                del nodes[key]
                dropped = True
            else:
                node[lo:hi] = _EMPTY_NODE[:hi - lo]
                node[NODE_PAGES] = count - removed
            self._entries -= removed
        if dropped:
            self._sorted_keys = None
        return removed_values

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
        key = max(self._nodes)
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

        # The node array, its key int, its dict slot (hash, key, value, about 1.5x for the
        # table's spare room) and its slot in the sorted key cache.
        per_node = sys.getsizeof(_new_node()) + 28 + 40 + 8
        return len(self._nodes) * per_node
