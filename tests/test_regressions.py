"""Regression tests for bugs the fuzzers found, each as the shrunk program it came from.

Several were found when the core decided visibility by asking the leaves and freed pages that
no leaf saw. Since issue 9 the core follows the seed: split bits and limits decide, and such
pages stay in their hidden node until a merge or close, charged to nobody. Those programs now
check that the pages are reported (`_accounted`) and the content is right.
"""

from vmo import PAGE_SIZE as P
from vmo import ChildOptions as C
from vmo import Kernel, VmoOp, VmoOptions, debug


def _accounted(k: Kernel) -> None:
    """Committed pages of the live VMOs plus the pages charged to nobody are the frames held."""
    debug.validate(k)
    stats = k.memory_stats()
    charged = sum(v.get_info().committed_bytes for v in k.live_vmos()) // P
    assert charged + stats.unreachable_pages == stats.vmo_pages


def test_fork_after_partial_release_leaves_no_unseen_copy() -> None:
    """vmo fuzz seed 3577433036: after a snapshot's parent shrank, a hidden node still saw an
    offset by its limits that no leaf below it saw; a fork then copied instead of migrating and
    left a copy no VMO could see (attribution 6 pages, frames 7)."""
    with Kernel(1 << 20) as k:
        v0 = k.vmo_create(3 * P)
        v0.write(b"a" * 3 * P)
        v0.write(b"b" * P, 0)
        v1 = v0.create_child(C.SNAPSHOT | C.RESIZABLE, 0, 3 * P)
        v2 = v1.create_child(C.SNAPSHOT, 0, 2 * P)
        v1.create_child(C.SNAPSHOT, 2 * P, P)
        v1.set_size(P)
        debug.validate(k)
        v2.pin(0, 2 * P, writable=False)
        _accounted(k)
        assert v2.read(2 * P) == b"b" * P + b"a" * P


def test_sibling_shrink_after_partial_release_frees_unseen_pages() -> None:
    """vmo fuzz (mutant campaign, seed 0): a shrink in the middle of a hidden child's window
    could only be recorded with split bits; a later shrink of its sibling then stopped at the
    hidden child's limits and kept grandparent pages no leaf saw (7 attributed, 13 held)."""
    with Kernel(1 << 20) as k:
        v0 = k.vmo_create(13 * P, VmoOptions.RESIZABLE)
        v0.write(bytes(range(1, 14)) * P)
        v1 = v0.create_child(C.SNAPSHOT, 0, P)
        v2 = v0.create_child(C.SNAPSHOT | C.RESIZABLE, 0, 13 * P)
        v3 = v2.create_child(C.SNAPSHOT, 12 * P, P)
        v2.set_size(P)
        debug.validate(k)
        v0.set_size(6 * P)
        _accounted(k)
        data = bytes(range(1, 14)) * P
        assert v1.read(P) == v2.read(P) == v0.read(P) == data[:P]
        assert v3.read(P) == data[12 * P:13 * P]


def test_merge_drops_pages_no_leaf_of_the_child_sees() -> None:
    """vmo fuzz seed 2043375945 (980 s): closing the last VMOs above a hidden node merged
    into it pages its limits covered but none of its leaves saw (2 attributed, 3 held)."""
    with Kernel(1 << 20) as k:
        v0 = k.vmo_create(4 * P)
        v0.write(b"0123" * P)
        v1 = v0.create_child(C.SNAPSHOT, 0, 4 * P)
        v1.create_child(C.SNAPSHOT, 0, P).close()
        v3 = v1.create_child(C.SNAPSHOT | C.RESIZABLE, 0, 4 * P)
        v4 = v3.create_child(C.SNAPSHOT, 2 * P, P)
        v3.set_size(P)
        v1.close()
        debug.validate(k)
        v0.close()
        _accounted(k)
        assert v3.read(P) == b"0123" * (P // 4)
        assert v4.read(P) == (b"0123" * P)[2 * P:3 * P]


def test_place_many_with_frames_out_of_order() -> None:
    """vmo fuzz seed 1968824055 (356 s): PhysicalMemory.place_many took [1, 2, 4, 3, 5] for a
    run of consecutive frames (first/last/second looked right) and left frame 3 in state ALLOC
    inside a page list."""
    from vmo.pmm import FrameState, PageQueue, PhysicalMemory

    pmm = PhysicalMemory(16 * P)
    frames = pmm.alloc(5)
    order = [frames[0], frames[1], frames[3], frames[2], frames[4]]
    owner = object()
    pmm.place_many(order, owner, 10, PageQueue.ANONYMOUS, 0)
    for i, f in enumerate(order):
        assert pmm.state[f] == FrameState.OBJECT
        assert pmm.owner[f] is owner and pmm.offset[f] == 10 + i
    pmm.close()


def test_discardable_pins_zero_and_close_keep_frames_owned() -> None:
    """The program of vmo fuzz seed 1968824055, shrunk."""
    with Kernel(1 << 20) as k:
        a = k.vmo_create(3 * P, VmoOptions.DISCARDABLE)
        a.write(b"a" * 3 * P)
        a.pin(0, P, writable=False)
        b = k.vmo_create(2 * P, VmoOptions.DISCARDABLE)
        b.write(b"b" * 2 * P)
        a.op_range(VmoOp.ZERO, 0, 3 * P)
        c = k.vmo_create(4 * P, VmoOptions.DISCARDABLE)
        c.write(b"c" * 4 * P)
        c.op_range(VmoOp.ZERO, 3 * P, P)
        a.close()
        b.close()
        d = k.vmo_create(4 * P, VmoOptions.DISCARDABLE)
        d.write(b"d" * 4 * P)
        debug.validate(k)


def test_closing_the_only_viewer_frees_the_grandparents_page() -> None:
    """vmo fuzz seed 1368459288 (367 s): closing a leaf that alone saw a page of a hidden
    grandparent merged its hidden parent into a sibling whose limits (but no leaf) still covered
    the page, which then stayed held by nobody (1 attributed, 2 held)."""
    from vmo.testing import VmoStateMachine

    state = VmoStateMachine()
    try:
        v0 = state.filled(npages=3, resizable=False, seed=1)
        v1 = state.zero_then_snapshot(at=(0, 0), npages=1, seed=1, then="keep", v=v0)
        state.snapshot_inside(at=(0, 0), npages=1, resizable=False, v=v1)
        v4 = state.create_child(at=(0, 0), kind="snapshot", no_write=False, resizable=False,
                                size=8192, v=v1)
        state.snapshot_inside(at=(0, 0), npages=1, resizable=False, v=v1)
        state.snapshot_inside(at=(667, 0), npages=1, resizable=False, v=v1)
        state.close(v=v1)
        state.close(v=v0)
        state.close(v=v4)
        state.hierarchy_valid()
        state.contents_match()
    finally:
        state.teardown()


def test_machine_split_bit_check_allows_the_seeds_unreachable_pages() -> None:
    """vmo fuzz, after issue 9 (the machine, not the core): a release walked down through
    hidden nodes whose windows it could not shrink left a page above them that no leaf on
    either side saw, with only the other side's split bit. The seed keeps it (unreachable,
    charged to nobody); the machine's exact-split-bits check must accept it there, and only
    there."""
    from vmo.testing import VmoStateMachine

    state = VmoStateMachine()
    try:
        v0 = state.filled(npages=9, seed=6651, resizable=True)
        v1, v2, v3, v4 = state.fan(count=4, seed=204, v=v0, windows=True)
        v5 = state.snapshot_inside(at=(0, 0), npages=15, resizable=False, v=v4)
        v6, v7, v8, v9, v10 = state.fan(count=5, seed=5838, v=v5, windows=True)
        state.write_pages(at=(0, 0), npages=3, seed=687, v=v10)
        state.write(at=(0, 7), length=807, seed=286, v=v8)
        state.snapshot(at=(1382, 0), resizable=True, size=32768, v=v5)
        state.snapshot(at=(1044, 0), resizable=True, size=45056, v=v5)
        v13, v14, v15, v16, v17 = state.fan(count=5, seed=5706, v=v5, windows=False)
        state.snapshot_inside(at=(117, 0), npages=6, resizable=False, v=v16)
        state.write(at=(500, 0), length=258, seed=28879, v=v8)
        state.resize_pages(npages=2, v=v0)
        state.resize_pages(npages=17, v=v15)
        state.resize_pages(npages=16, v=v7)
        state.resize_pages(npages=17, v=v9)
        state.resize_pages(npages=7, v=v4)
        state.cow_step(action="write", at=(420, 0), npages=3, seed=230, v=v2)
        state.contents_match()
        state.hierarchy_valid()
        state.structure_matches()
        _accounted(state.k)
    finally:
        state.teardown()
