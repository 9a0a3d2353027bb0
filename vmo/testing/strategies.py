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
    """Byte sizes: whole pages mostly, sometimes ragged (they round up)."""
    return st.one_of(
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


def lengths(max_pages: int = MAX_PAGES) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 3 * PAGE_SIZE),
        st.integers(0, max_pages).map(lambda n: n * PAGE_SIZE),
        st.integers(0, max_pages * PAGE_SIZE),
    )


def payload(seed: int, length: int) -> bytes:
    """Deterministic bytes that differ on every page (so misplaced pages are caught)."""
    return random.Random(seed).randbytes(length)


seeds = st.integers(min_value=1, max_value=2**32 - 1)

CHILD_KINDS = ("snapshot", "aow", "slice")
OPS = ("COMMIT", "DECOMMIT", "ZERO", "DONT_NEED", "ALWAYS_NEED", "PREFETCH", "CACHE_SYNC",
       "CACHE_CLEAN_INVALIDATE")
LOCK_OPS = ("LOCK", "TRY_LOCK", "UNLOCK")
