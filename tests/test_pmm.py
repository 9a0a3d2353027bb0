"""Unit tests of `vmo.pmm.PhysicalMemory`: the memfd arena, the frame table and page queues.

Frame 0 is the shared zero page and is never handed out; allocation is all-or-nothing
(``ERR_NO_MEMORY``); a reused frame allocated with ``zero=True`` reads as zeros; freeing resets
the frame's metadata and takes it off its queue.
"""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from vmo import Status, ZxError
from vmo.pmm import (
    PAGE_SIZE,
    SPLIT_LEFT,
    ZERO_FRAME,
    DirtyState,
    FrameState,
    PageQueue,
    PhysicalMemory,
)


@pytest.fixture
def pmm():
    p = PhysicalMemory(16 * PAGE_SIZE)
    yield p
    p.close()


def fill(p: PhysicalMemory, frame: int, byte: int) -> None:
    p.view(frame)[:] = bytes([byte]) * PAGE_SIZE


def content(p: PhysicalMemory, frame: int) -> bytes:
    return bytes(p.view(frame))


# ---------------------------------------------------------------------------- construction


def test_geometry(pmm):
    assert PAGE_SIZE == 4096
    assert pmm.total_frames == 16
    assert pmm.free_frames == 15  # frame 0 is the zero page
    assert pmm.used_frames == 0
    assert pmm.state[ZERO_FRAME] == FrameState.ZERO
    assert pmm.frames_in_state(FrameState.ZERO) == 1
    assert pmm.frames_in_state(FrameState.FREE) == 15
    assert len(pmm.physmap) == 16 * PAGE_SIZE
    assert os.fstat(pmm.fd).st_size == 16 * PAGE_SIZE
    assert not pmm.closed


def test_memory_rounds_down_to_frames():
    p = PhysicalMemory(5 * PAGE_SIZE + 100)
    try:
        assert p.total_frames == 5
        assert p.free_frames == 4
    finally:
        p.close()


@pytest.mark.parametrize("memory", [0, 1, PAGE_SIZE, 2 * PAGE_SIZE - 1])
def test_too_small_arena_is_invalid_args(memory):
    with pytest.raises(ZxError) as e:
        PhysicalMemory(memory)
    assert e.value.status == Status.ERR_INVALID_ARGS


def test_smallest_arena_has_one_frame():
    p = PhysicalMemory(2 * PAGE_SIZE)
    try:
        assert p.alloc(1) == [1]
        with pytest.raises(ZxError) as e:
            p.alloc(1)
        assert e.value.status == Status.ERR_NO_MEMORY
    finally:
        p.close()


def test_metadata_bytes_per_frame_under_64(pmm):
    assert 0 < pmm.metadata_bytes_per_frame() < 64
    big = PhysicalMemory(4096 * PAGE_SIZE)
    try:
        assert big.metadata_bytes_per_frame() < 64
    finally:
        big.close()


# ---------------------------------------------------------------------------- allocation


def test_alloc_accounting(pmm):
    frames = pmm.alloc(4)
    assert frames == [1, 2, 3, 4]  # fresh frames in ascending order
    assert pmm.free_frames == 11
    assert pmm.used_frames == 4
    assert all(pmm.state[f] == FrameState.ALLOC for f in frames)
    assert pmm.frames_in_state(FrameState.ALLOC) == 4
    assert pmm.allocated_total == 4
    pmm.free(frames[:2])
    assert pmm.free_frames == 13
    assert pmm.used_frames == 2
    assert pmm.freed_total == 2
    assert all(pmm.state[f] == FrameState.FREE for f in frames[:2])


def test_alloc_zero_and_negative_count_is_empty(pmm):
    assert pmm.alloc(0) == []
    assert pmm.alloc(-3) == []
    assert pmm.free_frames == 15
    pmm.free([])
    assert pmm.free_frames == 15


def test_alloc_one(pmm):
    f = pmm.alloc_one()
    assert f >= 1
    assert pmm.state[f] == FrameState.ALLOC
    assert pmm.used_frames == 1


def test_zero_page_is_never_handed_out(pmm):
    frames = pmm.alloc(15)
    assert ZERO_FRAME not in frames
    assert sorted(frames) == list(range(1, 16))
    pmm.free(frames)
    again = pmm.alloc(15)
    assert ZERO_FRAME not in again
    assert sorted(again) == list(range(1, 16))
    assert pmm.state[ZERO_FRAME] == FrameState.ZERO


def test_exhaustion_is_all_or_nothing(pmm):
    held = pmm.alloc(10)
    before = (pmm.free_frames, pmm.allocated_total, bytes(pmm.state), list(pmm._free))
    with pytest.raises(ZxError) as e:
        pmm.alloc(6)  # 5 free
    assert e.value.status == Status.ERR_NO_MEMORY
    assert (pmm.free_frames, pmm.allocated_total, bytes(pmm.state), list(pmm._free)) == before
    # Mix of reused and fresh frames: also all or nothing.
    pmm.free(held[:3])
    with pytest.raises(ZxError) as e:
        pmm.alloc(9)  # 8 free: 3 reused + 5 fresh
    assert e.value.status == Status.ERR_NO_MEMORY
    assert pmm.free_frames == 8
    got = pmm.alloc(8)
    assert len(set(got)) == 8
    assert not set(got) & set(held[3:])
    assert pmm.free_frames == 0
    with pytest.raises(ZxError) as e:
        pmm.alloc_one()
    assert e.value.status == Status.ERR_NO_MEMORY


def test_freed_frames_are_reused_in_order(pmm):
    frames = pmm.alloc(5)
    pmm.free([2, 3, 4])
    assert pmm.alloc(3) == [2, 3, 4]
    pmm.free(frames)
    assert sorted(pmm.alloc(15)) == list(range(1, 16))


def test_fresh_frames_are_zero(pmm):
    for f in pmm.alloc(15, zero=False):
        assert pmm.is_zero(f)


def test_reused_frames_are_zeroed(pmm):
    frames = pmm.alloc(15)
    for f in frames:
        fill(pmm, f, 0xAB)
        assert not pmm.is_zero(f)
    pmm.free(frames)
    zeroed_before = pmm.zeroed_total
    again = pmm.alloc(15)
    for f in again:
        assert pmm.is_zero(f)
        assert content(pmm, f) == bytes(PAGE_SIZE)
    assert pmm.zeroed_total == zeroed_before + 15


def test_alloc_without_zero_skips_clearing(pmm):
    frames = pmm.alloc(3)
    for f in frames:
        fill(pmm, f, 0x11)
    pmm.free(frames)
    z = pmm.zeroed_total
    pmm.alloc(3, zero=False)  # content undefined: the caller overwrites it
    assert pmm.zeroed_total == z


def test_double_free_and_zero_page_free_are_refused(pmm):
    f = pmm.alloc_one()
    pmm.free([f])
    free_before = pmm.free_frames
    with pytest.raises(AssertionError):
        pmm.free([f])
    with pytest.raises(AssertionError):
        pmm.free([ZERO_FRAME])
    with pytest.raises(AssertionError):
        pmm.free([9])  # never allocated
    assert pmm.free_frames == free_before
    assert pmm.state[ZERO_FRAME] == FrameState.ZERO


def test_free_resets_metadata(pmm):
    f = pmm.alloc_one()
    owner = object()
    pmm.set_owner(f, owner, 77)
    assert pmm.state[f] == FrameState.OBJECT
    assert pmm.owner[f] is owner
    assert pmm.offset[f] == 77
    pmm.split[f] = SPLIT_LEFT
    pmm.dirty[f] = DirtyState.DIRTY
    pmm.pin_count[f] = 3
    pmm.set_queue(f, PageQueue.WIRED)
    pmm.free([f])
    assert pmm.state[f] == FrameState.FREE
    assert pmm.owner[f] is None
    assert pmm.split[f] == 0
    assert pmm.dirty[f] == DirtyState.UNTRACKED
    assert pmm.pin_count[f] == 0
    assert pmm.queue[f] == PageQueue.NONE
    assert f not in pmm.queues[PageQueue.WIRED]


def test_zero_page_reads_zero(pmm):
    assert pmm.is_zero(ZERO_FRAME)
    assert content(pmm, ZERO_FRAME) == bytes(PAGE_SIZE)


# ---------------------------------------------------------------------------- contents


def test_view_and_run_view(pmm):
    a, b = pmm.alloc(2)
    assert b == a + 1
    pmm.view(a, 10, 20)[:] = b"0123456789"
    assert bytes(pmm.view(a)[10:20]) == b"0123456789"
    run = pmm.run_view(a, 2)
    assert len(run) == 2 * PAGE_SIZE
    run[PAGE_SIZE:PAGE_SIZE + 3] = b"xyz"
    assert bytes(pmm.view(b, 0, 3)) == b"xyz"
    # The physmap is the memfd: the bytes are in the file.
    assert os.pread(pmm.fd, 3, b * PAGE_SIZE) == b"xyz"


def test_copy_frame_and_is_zero(pmm):
    src, dst = pmm.alloc(2)
    pattern = bytes(range(256)) * (PAGE_SIZE // 256)
    pmm.view(src)[:] = pattern
    assert not pmm.is_zero(src)
    pmm.copy_frame(dst, src)
    assert content(pmm, dst) == pattern
    assert content(pmm, src) == pattern
    # Copying the zero page clears the destination.
    pmm.copy_frame(dst, ZERO_FRAME)
    assert pmm.is_zero(dst)
    assert content(pmm, src) == pattern
    assert pmm.is_zero(ZERO_FRAME)


def test_is_zero_sees_one_byte(pmm):
    f = pmm.alloc_one()
    for pos in (0, 1, PAGE_SIZE // 2, PAGE_SIZE - 1):
        pmm.view(f, pos, pos + 1)[:] = b"\x01"
        assert not pmm.is_zero(f)
        pmm.view(f, pos, pos + 1)[:] = b"\x00"
        assert pmm.is_zero(f)


def test_zero_frame_clears(pmm):
    f = pmm.alloc_one()
    fill(pmm, f, 0xFF)
    z = pmm.zeroed_total
    pmm.zero_frame(f)
    assert pmm.is_zero(f)
    assert pmm.zeroed_total == z + 1


# ---------------------------------------------------------------------------- queues


def test_set_queue_and_lru_order(pmm):
    a, b, c, d = pmm.alloc(4)
    for f in (a, b, c):
        pmm.set_queue(f, PageQueue.PAGER_BACKED)
    assert list(pmm.lru(PageQueue.PAGER_BACKED)) == [a, b, c]
    assert pmm.queue[a] == PageQueue.PAGER_BACKED
    # Setting the same queue again moves the frame to the most recently used end.
    pmm.set_queue(a, PageQueue.PAGER_BACKED)
    assert list(pmm.lru(PageQueue.PAGER_BACKED)) == [b, c, a]
    # Moving between queues.
    pmm.set_queue(b, PageQueue.PAGER_BACKED_DIRTY)
    assert list(pmm.lru(PageQueue.PAGER_BACKED)) == [c, a]
    assert list(pmm.lru(PageQueue.PAGER_BACKED_DIRTY)) == [b]
    assert pmm.queue[b] == PageQueue.PAGER_BACKED_DIRTY
    # NONE takes it off every queue.
    pmm.set_queue(c, PageQueue.NONE)
    assert list(pmm.lru(PageQueue.PAGER_BACKED)) == [a]
    assert pmm.queue[c] == PageQueue.NONE
    assert all(c not in q for q in pmm.queues.values())
    # A frame never queued is in none.
    assert all(d not in q for q in pmm.queues.values())
    assert PageQueue.NONE not in pmm.queues


def test_touch_moves_to_tail(pmm):
    frames = pmm.alloc(4)
    for f in frames:
        pmm.set_queue(f, PageQueue.PAGER_BACKED)
    pmm.touch(frames[0])
    pmm.touch(frames[2])
    assert list(pmm.lru(PageQueue.PAGER_BACKED)) == [frames[1], frames[3], frames[0], frames[2]]
    # Touching a frame in no queue does nothing.
    extra = pmm.alloc_one()
    pmm.touch(extra)
    assert pmm.queue[extra] == PageQueue.NONE
    assert all(extra not in q for q in pmm.queues.values())


def test_lru_is_a_snapshot(pmm):
    frames = pmm.alloc(3)
    for f in frames:
        pmm.set_queue(f, PageQueue.PAGER_BACKED)
    it = pmm.lru(PageQueue.PAGER_BACKED)
    seen = []
    for f in it:
        seen.append(f)
        pmm.set_queue(f, PageQueue.NONE)  # mutating the queue while walking it
    assert seen == frames
    assert list(pmm.lru(PageQueue.PAGER_BACKED)) == []


def test_free_removes_from_queue(pmm):
    frames = pmm.alloc(3)
    for f in frames:
        pmm.set_queue(f, PageQueue.PAGER_BACKED)
    pmm.free([frames[1]])
    assert list(pmm.lru(PageQueue.PAGER_BACKED)) == [frames[0], frames[2]]
    again = pmm.alloc_one()
    assert again == frames[1]
    assert pmm.queue[again] == PageQueue.NONE


# ---------------------------------------------------------------------------- close


def test_close_is_idempotent_and_closes_fd():
    p = PhysicalMemory(4 * PAGE_SIZE)
    fd = p.fd
    p.close()
    assert p.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    p.close()  # a second close does nothing
    assert p.closed


def test_close_with_live_frame_view():
    p = PhysicalMemory(4 * PAGE_SIZE)
    f = p.alloc_one()
    v = p.view(f)  # someone still holds a view of a frame
    p.close()
    assert p.closed
    v[0] = 1  # the mapping lives on with the view
    del v


# ---------------------------------------------------------------------------- threads


def test_concurrent_alloc_free_accounting():
    p = PhysicalMemory(256 * PAGE_SIZE)
    errors: list[BaseException] = []
    owned: list[list[int]] = [[] for _ in range(4)]

    def worker(i: int) -> None:
        try:
            for n in range(300):
                try:
                    owned[i].extend(p.alloc(1 + (n % 5)))
                except ZxError as e:
                    assert e.status == Status.ERR_NO_MEMORY
                if len(owned[i]) > 20:
                    p.free(owned[i][:10])
                    del owned[i][:10]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        everything = [f for lst in owned for f in lst]
        assert len(everything) == len(set(everything))
        assert ZERO_FRAME not in everything
        assert p.used_frames == len(everything)
        assert p.frames_in_state(FrameState.ALLOC) == len(everything)
        assert p.allocated_total - p.freed_total == len(everything)
    finally:
        p.close()


# ---------------------------------------------------------------------------- stateful


class PmmMachine(RuleBasedStateMachine):
    """Allocate, write a per-frame pattern, free: against a model of who owns what."""

    held = Bundle("held")

    @initialize(frames=st.integers(min_value=2, max_value=24))
    def setup(self, frames):
        self.p = PhysicalMemory(frames * PAGE_SIZE)
        self.total = frames
        self.owned: dict[int, int] = {}  # frame -> pattern byte
        self.tag = 0

    def teardown(self):
        if hasattr(self, "p"):
            self.p.close()

    @rule(target=held, count=st.integers(min_value=1, max_value=8), zero=st.booleans())
    def alloc(self, count, zero):
        free = self.total - 1 - len(self.owned)
        if count > free:
            before = bytes(self.p.state)
            try:
                self.p.alloc(count, zero=zero)
            except ZxError as e:
                assert e.status == Status.ERR_NO_MEMORY
            else:
                raise AssertionError("allocation beyond the free frames succeeded")
            assert bytes(self.p.state) == before
            return []
        frames = self.p.alloc(count, zero=zero)
        assert len(frames) == count == len(set(frames))
        for f in frames:
            assert 1 <= f < self.total
            assert f not in self.owned
            if zero:
                assert self.p.is_zero(f)
            self.tag = self.tag % 255 + 1
            fill(self.p, f, self.tag)
            self.owned[f] = self.tag
        return frames

    @rule(frames=consumes(held))
    def free(self, frames):
        for f in frames:
            assert content(self.p, f)[:: PAGE_SIZE // 8] == bytes([self.owned[f]]) * 8
        self.p.free(frames)
        for f in frames:
            del self.owned[f]

    @invariant()
    def accounting(self):
        if not hasattr(self, "p"):
            return
        p = self.p
        assert p.used_frames == len(self.owned)
        assert p.free_frames == self.total - 1 - len(self.owned)
        assert p.frames_in_state(FrameState.ALLOC) == len(self.owned)
        assert p.state[ZERO_FRAME] == FrameState.ZERO
        assert p.is_zero(ZERO_FRAME)


PmmMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestPmmMachine = PmmMachine.TestCase


def test_refused_free_changes_nothing(pmm):
    a, b = pmm.alloc(2)
    pmm.free([b])
    with pytest.raises(AssertionError):
        pmm.free([a, b])  # b is already free
    # a is still allocated and can be freed normally; nothing leaked.
    assert pmm.state[a] == FrameState.ALLOC
    pmm.free([a])
    assert pmm.free_frames == 15


# ---------------------------------------------------------------------------- run fast paths


def test_free_of_a_repeated_frame_is_caught_not_taken_for_a_run(pmm):
    """[f, f, f + 2] is sorted and spans len - 1: a run check that trusted distinct frames
    would free f + 1 (which nobody freed) instead of catching the double free."""
    frames = pmm.alloc(3)
    f = frames[0]
    with pytest.raises(AssertionError):
        pmm.free([f, f, f + 2])
    assert all(pmm.state[x] == FrameState.ALLOC for x in frames)  # nothing was freed
    pmm.free(frames)


@pytest.mark.parametrize("order", ["ascending", "shuffled"])
def test_bulk_ops_on_runs_and_scattered_frames_agree(pmm, order):
    """place_many / set_dirty_many / touch_many / unown_many / free on a run of consecutive
    frames (column slices) leave the same metadata and queues as on the frame-by-frame path."""
    import random

    frames = pmm.alloc(12)
    if order == "shuffled":
        random.Random(5).shuffle(frames)
    owner = object()
    pmm.place_many(frames, owner, 100, PageQueue.PAGER_BACKED, DirtyState.CLEAN)
    for i, f in enumerate(frames):
        assert (pmm.state[f], pmm.owner[f], pmm.offset[f]) == (FrameState.OBJECT, owner, 100 + i)
    assert list(pmm.lru(PageQueue.PAGER_BACKED)) == frames
    pmm.set_dirty_many(frames[:5], DirtyState.DIRTY, PageQueue.PAGER_BACKED_DIRTY)
    assert list(pmm.lru(PageQueue.PAGER_BACKED_DIRTY)) == frames[:5]
    assert [pmm.dirty[f] for f in frames] == [DirtyState.DIRTY] * 5 + [DirtyState.CLEAN] * 7
    pmm.touch_many(frames[5:8])
    assert list(pmm.lru(PageQueue.PAGER_BACKED)) == frames[8:] + frames[5:8]
    pmm.unown_many(frames)
    assert all(pmm.state[f] == FrameState.ALLOC and pmm.queue[f] == 0 for f in frames)
    assert not pmm.queues[PageQueue.PAGER_BACKED] and not pmm.queues[PageQueue.PAGER_BACKED_DIRTY]
    pmm.free(frames)
    assert pmm.used_frames == 0
