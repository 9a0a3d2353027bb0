"""Which pages of one region are present in one store (staging memory or the swap file).

Model: crosvm ``swap/src/present_list.rs``. One byte per page (0 absent, 1 present) in a
``bytearray``, so that the questions the handler asks most -- where is the first run of present
pages, how many are present in a range -- are answered by C-level ``find``/``count`` over the
bytes rather than by a loop over pages. A cursor remembers the lowest index that may be
present, so that repeated "first run" questions (swap out, swap in) do not rescan the absent
prefix each time.
"""

from __future__ import annotations

from collections.abc import Iterator

_ONE = b"\x01"
_ZERO = b"\x00"


class PresentList:
    """Present/absent state of ``num_pages`` pages (see the module docstring)."""

    __slots__ = ("_bits", "_count", "_first")

    def __init__(self, num_pages: int) -> None:
        self._bits = bytearray(num_pages)
        self._count = 0
        self._first = num_pages  # no page below this index is present

    def __len__(self) -> int:
        return len(self._bits)

    @property
    def present_pages(self) -> int:
        return self._count

    def is_present(self, idx: int) -> bool:
        return 0 <= idx < len(self._bits) and self._bits[idx] == 1

    def states(self, start: int, end: int) -> bytes:
        """The state bytes of ``[start, end)`` (clipped to the list)."""
        return bytes(self._bits[start:end])

    def count(self, start: int, end: int) -> int:
        return self._bits.count(1, start, end)

    def mark_as_present(self, start: int, end: int) -> int:
        """Mark ``[start, end)`` present; returns how many pages were absent before."""
        end = min(end, len(self._bits))
        if end <= start:
            return 0
        added = (end - start) - self._bits.count(1, start, end)
        self._bits[start:end] = _ONE * (end - start)
        self._count += added
        if start < self._first:
            self._first = start
        return added

    def clear_range(self, start: int, end: int) -> int:
        """Mark ``[start, end)`` absent; returns how many pages were present before."""
        end = min(end, len(self._bits))
        if end <= start:
            return 0
        removed = self._bits.count(1, start, end)
        if removed:
            self._bits[start:end] = _ZERO * (end - start)
            self._count -= removed
        if self._count == 0:
            self._first = len(self._bits)
        elif start <= self._first < end:
            self._first = end
        return removed

    def first_data_range(self, max_pages: int) -> tuple[int, int] | None:
        """The first run of present pages, at most ``max_pages`` long (crosvm's
        ``first_data_range``), or None if nothing is present."""
        if not self._count:
            return None
        start = self._bits.find(_ONE, self._first)
        if start < 0:  # cannot happen while _count > 0; keep the cursor honest anyway
            self._first = len(self._bits)
            return None
        self._first = start
        limit = min(len(self._bits), start + max_pages)
        end = self._bits.find(_ZERO, start, limit)
        return start, (limit if end < 0 else end)

    def runs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """Runs ``(run_start, run_end)`` of present pages in ``[start, end)``, ascending."""
        bits = self._bits
        end = len(bits) if end is None else min(end, len(bits))
        pos = max(start, self._first)
        while pos < end:
            s = bits.find(_ONE, pos, end)
            if s < 0:
                return
            e = bits.find(_ZERO, s, end)
            e = end if e < 0 else e
            yield s, e
            pos = e

    def resize(self, num_pages: int) -> int:
        """Grow (new pages absent) or shrink; returns how many present pages were cut off."""
        old = len(self._bits)
        if num_pages >= old:
            self._bits.extend(bytes(num_pages - old))
            if self._count == 0:
                self._first = num_pages
            return 0
        cut = self._bits.count(1, num_pages)
        del self._bits[num_pages:]
        self._count -= cut
        if self._count == 0 or self._first > num_pages:
            self._first = num_pages if self._count == 0 else min(self._first, num_pages)
        return cut
