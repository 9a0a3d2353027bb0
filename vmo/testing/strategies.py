"""Hypothesis strategies for VMO programs: sizes, offsets near interesting boundaries, data.

Bugs in a copy-on-write hierarchy hide at edges: offset 0, page boundaries, one byte either side
of them, a parent's limit, the end of a VMO and just past it. `offsets` draws mostly from those
edges and sometimes from anywhere.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from vmo.pmm import PAGE_SIZE

#: Largest VMO the state machine creates, in pages (kept small so that every step can compare
#: whole VMOs with the oracle).
MAX_PAGES = 16


def page_counts(max_pages: int = MAX_PAGES) -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=max_pages)


def sizes(max_pages: int = MAX_PAGES) -> st.SearchStrategy[int]:
    """Byte sizes: whole pages mostly (rarely empty), sometimes ragged (they round up)."""
    return st.one_of(
        st.integers(1, max_pages).map(lambda n: n * PAGE_SIZE),
        st.integers(1, max_pages).map(lambda n: n * PAGE_SIZE),
        page_counts(max_pages).map(lambda n: n * PAGE_SIZE),
        st.integers(min_value=0, max_value=max_pages * PAGE_SIZE),
    )


def offsets(limit_pages: int = MAX_PAGES + 2) -> st.SearchStrategy[int]:
    """Byte offsets near the edges that matter: page boundaries and one byte either side."""
    edge = st.tuples(st.integers(0, limit_pages), st.sampled_from([0, 0, 0, 1, -1, 7])).map(
        lambda t: max(0, t[0] * PAGE_SIZE + t[1]))
    anywhere = st.integers(0, limit_pages * PAGE_SIZE)
    return st.one_of(edge, edge, anywhere)


def aligned_offsets(limit_pages: int = MAX_PAGES + 2) -> st.SearchStrategy[int]:
    return st.integers(0, limit_pages).map(lambda n: n * PAGE_SIZE)


TO_END = -1  # a length meaning "up to the end of the VMO"
PAST_END = -2  # a length meaning "one byte past the end of the VMO"


def lengths(max_pages: int = MAX_PAGES) -> st.SearchStrategy[int]:
    """Byte lengths, or `TO_END` / `PAST_END` (see `resolve_length`)."""
    return st.one_of(
        st.integers(0, PAGE_SIZE + 16),
        st.sampled_from([TO_END, TO_END, TO_END, PAST_END, 0, 1, PAGE_SIZE, 2 * PAGE_SIZE]),
        st.integers(0, max_pages * PAGE_SIZE),
    )


def resolve_length(length: int, offset: int, size: int) -> int:
    if length == TO_END:
        return max(0, size - offset)
    if length == PAST_END:
        return max(0, size - offset) + 1
    return length


def positions() -> st.SearchStrategy[tuple[int, int]]:
    """Offsets relative to the target VMO: ``(permille, delta)`` means ``permille`` thousandths
    of its size, rounded down to a page, plus ``delta`` bytes. Mostly inside the VMO, at page
    edges and one byte either side; sometimes at or past the end. Tuples keep printed
    programs replayable."""
    permille = st.one_of(st.sampled_from([0, 0, 250, 500, 750, 999, 1000]),
                         st.integers(0, 999), st.integers(0, 999), st.integers(1000, 1500))
    delta = st.sampled_from([0, 0, 0, 0, 0, 0, 1, -1, 7, 4095])
    return st.tuples(permille, delta)


def inside_positions() -> st.SearchStrategy[tuple[int, int]]:
    """Like `positions`, but never at or past the end once `resolve_inside` clamps them: for
    rules whose calls should do real work (the bad offsets have a rule of their own)."""
    permille = st.one_of(st.sampled_from([0, 0, 250, 500, 750, 999]), st.integers(0, 999),
                         st.integers(0, 999))
    delta = st.sampled_from([0, 0, 0, 0, 0, 0, 1, -1, 7, 4095])
    return st.tuples(permille, delta)


def resolve_inside(position: tuple[int, int], size: int) -> int:
    """The offset a position means, kept inside ``[0, size]`` (``size`` only when empty)."""
    return min(resolve(position, size), max(0, size - 1))


def fit_length(length: int, offset: int, size: int) -> int:
    """A `lengths` value resolved and cut at the end of the VMO."""
    return max(0, min(resolve_length(length, offset, size), size - offset))


def aligned_positions() -> st.SearchStrategy[tuple[int, int]]:
    permille = st.one_of(st.sampled_from([0, 0, 500]), st.integers(0, 1000),
                         st.integers(1000, 1500))
    return st.tuples(permille, st.just(0))


def resolve(position: tuple[int, int], size: int) -> int:
    """The byte offset a `positions` value means for a VMO of ``size`` bytes."""
    permille, delta = position
    base = size * permille // 1000 // PAGE_SIZE * PAGE_SIZE
    return max(0, base + delta)


def payload(seed: int, length: int) -> bytes:
    """Deterministic bytes that differ on every page (so misplaced pages are caught)."""
    return random.Random(seed).randbytes(length)


seeds = st.integers(min_value=1, max_value=2**32 - 1)

CHILD_KINDS = ("snapshot", "aow", "slice")
OPS = ("COMMIT", "DECOMMIT", "ZERO", "DONT_NEED", "ALWAYS_NEED", "PREFETCH", "CACHE_SYNC",
       "CACHE_CLEAN_INVALIDATE")
LOCK_OPS = ("LOCK", "TRY_LOCK", "UNLOCK")
#: The kinds of call `VmoStateMachine.bad_call` makes (each should fail).
BAD_CALLS = ("read_past", "read_overlong", "write_past", "op_past", "decommit_ragged",
             "resize_fixed", "slice_bad", "child_ragged", "pin_bad", "unlock_unlocked",
             "size_huge")
