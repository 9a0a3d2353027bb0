"""Regression tests for points 5-9 of issue 9: statuses and request shapes as Zircon's.

Each test names the seed function (`vm_cow_pages.cc`, seed 004) or the Zircon behaviour it pins:

- 5: ``TakePagesLocked``: an aux VMO with a parent (a clone, a slice, a VMO with a snapshot
  child), a page source, or any child is ``ERR_BAD_STATE`` for ``supply_pages``.
- 6: ``CommitRangeLocked`` counts and allocates the pages it needs before it changes anything:
  COMMIT and pin of a clone that cannot fit fail with ``ERR_NO_MEMORY`` and commit nothing.
- 7: a pager VMO's source closes when its node goes (the root's ``fbl_recycle``), after the last
  at-least-on-write child: closing the handle earlier sends no COMPLETE, and the children's
  faults still reach the pager as READ requests it can answer.
- 8: one lookup covers at most ``LookupInfo::kMaxPages`` (16) pages, so DIRTY requests are at
  most 16 pages long; COMMIT looks up one page at a time.
- 9: DECOMMIT of a pager-backed root is ``ERR_NOT_SUPPORTED`` before alignment is checked;
  ZERO of a discarded VMO is OK and changes nothing; a resize marks a pager VMO modified.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmo
from vmo import (
    PAGE_SIZE,
    ChildOptions,
    Kernel,
    PageRequest,
    PageRequestCommand,
    PagerOp,
    PagerVmoOptions,
    Status,
    VmoOp,
    VmoOptions,
    ZxError,
)
from vmo.debug import validate

P = PAGE_SIZE
C = ChildOptions
READ, DIRTY, COMPLETE = PageRequestCommand.READ, PageRequestCommand.DIRTY, PageRequestCommand.COMPLETE

pytestmark = pytest.mark.timeout(60)


def page_bytes(i: int) -> bytes:
    unit = f"page{i:04d}|".encode()
    return (unit * (P // len(unit) + 1))[:P]


class Served:
    """A handler-mode pager serving pages ``page_bytes(i)`` and logging every request."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.log: list[tuple[PageRequestCommand, int, int]] = []
        self.complete = threading.Event()
        self.pager = k.pager_create(self.handle)

    def handle(self, req: PageRequest) -> None:
        self.log.append((req.command, req.offset // P, req.length // P))
        if req.command == READ:
            aux = self.k.vmo_create(req.length)
            aux.write(b"".join(page_bytes(req.offset // P + i) for i in range(req.length // P)))
            self.pager.supply_pages(req.vmo, req.offset, req.length, aux, 0)
            aux.close()
        elif req.command == DIRTY:
            self.pager.op_range(PagerOp.DIRTY, req.vmo, req.offset, req.length)
        else:
            self.complete.set()

    def of(self, command: PageRequestCommand) -> list[tuple[int, int]]:
        return [(o, n) for c, o, n in self.log if c == command]


@pytest.fixture
def k() -> Iterator[Kernel]:
    kernel = Kernel(memory=16 << 20)
    yield kernel
    kernel.close()


def status_of(fn: Callable[[], object]) -> Status:
    with pytest.raises(ZxError) as e:
        fn()
    return e.value.status


# ---------------------------------------------------------------------------- 5: aux VMOs


def _aux_clone(k: Kernel, s: Served) -> tuple[vmo.Vmo, list[vmo.Vmo]]:
    parent = k.vmo_create(4 * P)
    parent.write(b"p" * 4 * P)
    return parent.create_child(C.SNAPSHOT, 0, 4 * P), [parent]


def _aux_with(kind: ChildOptions) -> Callable[[Kernel, Served], tuple[vmo.Vmo, list[vmo.Vmo]]]:
    def make(k: Kernel, s: Served) -> tuple[vmo.Vmo, list[vmo.Vmo]]:
        aux = k.vmo_create(4 * P)
        aux.write(b"a" * 4 * P)
        return aux, [aux.create_child(kind, 0, 2 * P)]
    return make


def _aux_slice(k: Kernel, s: Served) -> tuple[vmo.Vmo, list[vmo.Vmo]]:
    parent = k.vmo_create(4 * P)
    parent.write(b"s" * 4 * P)
    return parent.create_child(C.SLICE, 0, 4 * P), [parent]


def _aux_pager(k: Kernel, s: Served) -> tuple[vmo.Vmo, list[vmo.Vmo]]:
    pv = s.pager.create_vmo(4 * P)
    pv.read(4 * P)
    return pv, []


def _aux_pager_clone(k: Kernel, s: Served) -> tuple[vmo.Vmo, list[vmo.Vmo]]:
    pv = s.pager.create_vmo(4 * P)
    child = pv.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 4 * P)
    child.write(b"c" * 4 * P)
    return child, [pv]


BAD_AUX = {
    "clone": _aux_clone,
    "snapshot_child": _aux_with(C.SNAPSHOT),
    "slice_child": _aux_with(C.SLICE),
    "at_least_on_write_child": _aux_with(C.SNAPSHOT_AT_LEAST_ON_WRITE),
    "slice": _aux_slice,
    "pager_backed": _aux_pager,
    "pager_backed_clone": _aux_pager_clone,
}


@pytest.mark.parametrize("kind", sorted(BAD_AUX))
@settings(max_examples=10)
@given(page=st.integers(0, 3), pages=st.integers(1, 4))
def test_supply_from_an_aux_that_shares_is_bad_state(kind: str, page: int, pages: int) -> None:
    """Seed ``TakePagesLocked``: ``parent_ || page_source_`` and ``children_list_len_`` are
    ERR_BAD_STATE. Nothing moves: the aux and its relatives read as before and the pager VMO
    holds nothing."""
    pages = min(pages, 4 - page)
    with Kernel(memory=4 << 20) as k:
        s = Served(k)
        target = s.pager.create_vmo(4 * P)
        aux, others = BAD_AUX[kind](k, s)
        before = [(v, v.read(v.get_size())) for v in (aux, *others)]
        assert status_of(lambda: s.pager.supply_pages(target, page * P, pages * P, aux,
                                                      page * P)) == Status.ERR_BAD_STATE
        validate(k)
        for v, data in before:
            assert v.read(v.get_size()) == data
        assert target.get_info().populated_bytes == 0


def test_aux_whose_snapshot_child_closed_supplies_again(k: Kernel) -> None:
    """Once the child is gone the aux owns its pages again (the hidden parent merged back)."""
    s = Served(k)
    target = s.pager.create_vmo(2 * P)
    aux = k.vmo_create(2 * P)
    aux.write(page_bytes(0) + page_bytes(1))
    child = aux.create_child(C.SNAPSHOT, 0, 2 * P)
    assert status_of(lambda: s.pager.supply_pages(target, 0, 2 * P, aux, 0)) == Status.ERR_BAD_STATE
    child.close()
    s.pager.supply_pages(target, 0, 2 * P, aux, 0)
    assert target.read(2 * P) == page_bytes(0) + page_bytes(1)
    assert aux.read(2 * P) == bytes(2 * P)
    assert s.log == []
    validate(k)


# ---------------------------------------------------------------------------- 6: COMMIT, pin


@pytest.fixture
def tiny() -> Iterator[Kernel]:
    kernel = Kernel(memory=16 * P)  # 15 usable frames
    yield kernel
    kernel.close()


def _free(k: Kernel) -> int:
    return k.memory_stats().free_pages


def _hold(k: Kernel, leave: int) -> vmo.Vmo:
    """A VMO holding every free frame but ``leave``."""
    v = k.vmo_create(max(1, _free(k) - leave) * P)
    v.write(b"\xee" * (_free(k) - leave) * P)
    assert _free(k) == leave
    return v


@pytest.mark.parametrize("how", ["commit", "pin", "pin_read_only"])
def test_commit_of_a_snapshot_that_cannot_fit_commits_nothing(tiny: Kernel, how: str) -> None:
    root = tiny.vmo_create(4 * P)
    root.write(b"R" * 4 * P)
    snap = root.create_child(C.SNAPSHOT, 0, 4 * P)
    _hold(tiny, leave=3)
    call = {"commit": lambda: snap.op_range(VmoOp.COMMIT, 0, 4 * P),
            "pin": lambda: snap.pin(0, 4 * P),
            "pin_read_only": lambda: snap.pin(0, 4 * P, writable=False)}[how]
    assert status_of(call) == Status.ERR_NO_MEMORY
    assert _free(tiny) == 3
    assert snap.get_info().committed_bytes == 0
    assert tiny.memory_stats().pinned_pages == 0
    assert snap.read(4 * P) == root.read(4 * P) == b"R" * 4 * P
    validate(tiny)


def test_commit_of_a_grandchild_that_cannot_fit_commits_nothing(tiny: Kernel) -> None:
    root = tiny.vmo_create(3 * P)
    root.write(b"G" * 3 * P)
    mid = root.create_child(C.SNAPSHOT, 0, 3 * P)
    leaf = mid.create_child(C.SNAPSHOT, 0, 3 * P)
    leaf.write(b"own", 0)  # one page of its own: two more are needed
    _hold(tiny, leave=1)
    assert status_of(lambda: leaf.op_range(VmoOp.COMMIT, 0, 3 * P)) == Status.ERR_NO_MEMORY
    assert _free(tiny) == 1
    assert leaf.get_info().committed_bytes == P
    validate(tiny)


def test_commit_counts_every_page_it_does_not_hold(tiny: Kernel) -> None:
    """The count is the seed's: one page per offset without a page here, even where the fork
    will migrate the hidden parent's page rather than copy it. The pages left unused go back."""
    root = tiny.vmo_create(4 * P)
    root.write(b"o" * 4 * P)
    snap = root.create_child(C.SNAPSHOT, 0, 4 * P)
    root.write(b"n" * 4 * P)  # the root forks every page: the snapshot alone sees the old ones
    holder = _hold(tiny, leave=3)
    assert status_of(lambda: snap.op_range(VmoOp.COMMIT, 0, 4 * P)) == Status.ERR_NO_MEMORY
    holder.op_range(VmoOp.DECOMMIT, 0, P)
    assert _free(tiny) == 4
    snap.op_range(VmoOp.COMMIT, 0, 4 * P)  # four pages migrate; none is allocated
    assert _free(tiny) == 4
    assert snap.get_info().committed_bytes == 4 * P
    assert snap.read(4 * P) == b"o" * 4 * P and root.read(4 * P) == b"n" * 4 * P
    validate(tiny)


def test_pin_of_a_clone_commits_then_pins(tiny: Kernel) -> None:
    root = tiny.vmo_create(4 * P)
    root.write(b"q" * 4 * P)
    snap = root.create_child(C.SNAPSHOT, 0, 4 * P)
    pinned = snap.pin(P, 2 * P)
    assert tiny.memory_stats().pinned_pages == 2
    assert snap.get_info().committed_bytes == 2 * P
    pinned.unpin()
    validate(tiny)


# ---------------------------------------------------------------------------- 7: closing


def _wait_for(event: threading.Event) -> bool:
    return event.wait(5)


def test_closing_the_pager_vmo_keeps_its_source_while_a_clone_lives(k: Kernel) -> None:
    s = Served(k)
    v = s.pager.create_vmo(4 * P)
    assert v.read(P) == page_bytes(0)
    clone = v.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 4 * P)
    v.close()
    time.sleep(0.05)  # a COMPLETE would come from a thread of its own
    assert not s.complete.is_set() and s.of(COMPLETE) == []
    # The clone's fault reaches the pager as a READ request carrying the closed VMO, and the
    # pager answers through it.
    assert clone.read(P, 2 * P) == page_bytes(2)
    assert s.of(READ)[-1] == (2, 1)
    assert clone.read(4 * P) == b"".join(page_bytes(i) for i in range(4))
    validate(k)
    # The user's handle stays closed.
    assert status_of(lambda: v.read(1)) == Status.ERR_BAD_HANDLE
    assert status_of(lambda: v.get_info()) == Status.ERR_BAD_HANDLE
    assert status_of(lambda: v.read(1)) == Status.ERR_BAD_HANDLE
    v.close()  # a second close does nothing (release is idempotent)
    # The last clone goes: the node goes, the source closes, the pager hears COMPLETE, and its
    # reference is no longer valid.
    clone.close()
    assert _wait_for(s.complete)
    assert s.of(COMPLETE) == [(0, 0)]
    aux = k.vmo_create(P)
    assert status_of(lambda: s.pager.supply_pages(v, 0, P, aux, 0)) == Status.ERR_BAD_HANDLE
    assert status_of(lambda: s.pager.query_vmo_stats(v)) == Status.ERR_BAD_HANDLE
    aux.close()
    validate(k)


def test_queue_mode_pager_serves_a_closed_vmo_for_its_clone(k: Kernel) -> None:
    pager = k.pager_create()
    v = pager.create_vmo(2 * P)
    clone = v.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 2 * P)
    v.close()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(clone.read(P, P)))
    reader.start()
    req = pager.get_request(timeout=5)
    assert (req.command, req.vmo, req.offset, req.length) == (READ, v, P, P)
    aux = k.vmo_create(P)
    aux.write(b"served")
    pager.supply_pages(req.vmo, P, P, aux, 0)
    reader.join(5)
    assert got == [b"served".ljust(P, b"\0")]
    pager.op_range(PagerOp.WRITEBACK_BEGIN, v, 0, 2 * P)  # the pager's other calls work too
    assert pager.query_dirty_ranges(v, 0, 2 * P) == []
    assert status_of(lambda: pager.get_request(timeout=0)) == Status.ERR_TIMED_OUT
    clone.close()
    assert pager.get_request(timeout=5).command == COMPLETE
    aux.close()
    pager.close()
    validate(k)


def test_pager_close_detaches_a_closed_vmo_that_clones_keep(k: Kernel) -> None:
    s = Served(k)
    v = s.pager.create_vmo(2 * P)
    clone = v.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE, 0, 2 * P)
    v.close()
    s.pager.close()
    assert status_of(lambda: clone.read(1)) == Status.ERR_BAD_STATE
    clone.close()
    validate(k)


# ---------------------------------------------------------------------------- 8: request sizes


def test_dirty_requests_cover_at_most_sixteen_pages(k: Kernel) -> None:
    s = Served(k)
    v = s.pager.create_vmo(40 * P, PagerVmoOptions.TRAP_DIRTY)
    v.read(40 * P)
    assert s.of(READ) == [(0, 40)]  # one request for the whole absent run (README)
    v.write(b"w" * 40 * P)
    assert s.of(DIRTY) == [(0, 16), (16, 16), (32, 8)]
    assert v.read(40 * P) == b"w" * 40 * P
    validate(k)


def test_dirty_request_from_the_middle_of_a_write(k: Kernel) -> None:
    s = Served(k)
    v = s.pager.create_vmo(40 * P, PagerVmoOptions.TRAP_DIRTY)
    v.read(40 * P)
    v.write(b"x", 3 * P)
    v.write(b"y" * 30 * P, 2 * P)
    # Page 2 first (16 pages from it, stopping at the Dirty page 3), then from page 4 on.
    assert s.of(DIRTY) == [(3, 1), (2, 1), (4, 16), (20, 12)]
    validate(k)


def test_untrapped_write_marks_every_page_dirty(k: Kernel) -> None:
    s = Served(k)
    v = s.pager.create_vmo(40 * P)
    v.read(40 * P)
    v.write(b"u" * 40 * P)
    assert s.of(DIRTY) == []
    ranges = s.pager.query_dirty_ranges(v, 0, 40 * P)
    assert [(r.offset, r.length) for r in ranges] == [(0, 40 * P)]


def test_commit_asks_to_dirty_one_page_at_a_time(k: Kernel) -> None:
    """COMMIT looks up with max_out_pages 1: zero pages it forks in a TRAP_DIRTY VMO are
    asked for page by page."""
    s = Served(k)
    v = s.pager.create_vmo(0, PagerVmoOptions.TRAP_DIRTY | PagerVmoOptions.RESIZABLE)
    v.set_size(3 * P)  # beyond the supply-zero offset: kernel zero pages
    v.op_range(VmoOp.COMMIT, 0, 3 * P)
    assert s.of(DIRTY) == [(0, 1), (1, 1), (2, 1)]
    assert s.of(READ) == []
    validate(k)


# ---------------------------------------------------------------------------- 9: statuses


@settings(max_examples=30)
@given(offset=st.integers(0, 4 * P), length=st.integers(1, 4 * P))
def test_decommit_of_a_pager_vmo_is_not_supported(offset: int, length: int) -> None:
    """Seed ``DecommitRangeLocked``: the page-source check comes before the alignment check,
    for the root and for a slice of it."""
    with Kernel(memory=4 << 20) as k:
        s = Served(k)
        v = s.pager.create_vmo(4 * P)
        sl = v.create_child(C.SLICE, 0, 4 * P)
        for target in (v, sl):
            length_in = min(length, 4 * P - offset)
            call = lambda t=target: t.op_range(VmoOp.DECOMMIT, offset, length)  # noqa: E731
            if length_in == 0:
                call()  # trimmed to nothing: OK before any other check
            else:
                assert status_of(call) == Status.ERR_NOT_SUPPORTED
        assert s.log == []
        validate(k)


@settings(max_examples=30)
@given(offset=st.integers(0, 3 * P), length=st.integers(0, 3 * P))
def test_zero_of_a_discarded_vmo_is_ok_and_changes_nothing(offset: int, length: int) -> None:
    length = min(length, 3 * P - offset)
    with Kernel(memory=4 << 20) as k:
        d = k.vmo_create(3 * P, VmoOptions.DISCARDABLE)
        d.op_range(VmoOp.LOCK, 0, 3 * P)
        d.write(b"d" * 3 * P)
        d.op_range(VmoOp.UNLOCK, 0, 3 * P)
        assert k.reclaim_discardable(3) == 3
        d.op_range(VmoOp.ZERO, offset, length)
        assert status_of(lambda: d.read(1)) == Status.ERR_NOT_FOUND  # still discarded
        assert d.get_info().committed_bytes == 0
        assert k.memory_stats().free_pages == k.memory_stats().total_pages - 1
        state = d.op_range(VmoOp.LOCK, 0, 3 * P)
        assert state is not None and state.discarded_size == 3 * P
        assert d.read(3 * P) == bytes(3 * P)
        validate(k)


@pytest.mark.parametrize("pages", [1, 4, 6])
def test_resize_marks_a_pager_vmo_modified(k: Kernel, pages: int) -> None:
    s = Served(k)
    v = s.pager.create_vmo(4 * P, PagerVmoOptions.RESIZABLE)
    assert not s.pager.query_vmo_stats(v, reset=True).modified
    v.set_size(pages * P)  # shrink, same size, grow: every successful resize counts
    assert s.pager.query_vmo_stats(v, reset=True).modified
    assert not s.pager.query_vmo_stats(v).modified


def test_resize_of_a_clone_of_a_pager_vmo_marks_nothing(k: Kernel) -> None:
    s = Served(k)
    v = s.pager.create_vmo(4 * P)
    clone = v.create_child(C.SNAPSHOT_AT_LEAST_ON_WRITE | C.RESIZABLE, 0, 4 * P)
    clone.set_size(2 * P)
    assert not s.pager.query_vmo_stats(v).modified
