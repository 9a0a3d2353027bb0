"""Physical memory: one memfd arena of page frames, mapped once, with per-frame metadata.

The arena plays the part of the machine's RAM. It is a memfd of ``memory`` bytes, mapped once
into this process (the *physmap*); frame ``n`` is the page at byte ``n * PAGE_SIZE``. Every byte a
VMO holds lives in some frame, so reading or writing a VMO is a copy to or from a slice of the
physmap.

Frame 0 is the shared zero page: never allocated, never written, read wherever a VMO shows
zeros without owning a page.

Per-frame metadata is kept the way the kernel keeps ``vm_page_t``: a table indexed by frame
number, as struct-of-arrays columns (``bytearray``/``array`` for the small fields, a list for the
owner backlink). A Python object per page would cost over 100 bytes before holding anything;
these columns cost about 31 bytes per frame, allocated once for the whole arena (8 of them are
`PhysicalMemory.ascending`, the numbers 0, 1, 2, ... as an array: slices of it write a run of
consecutive frame numbers or offsets at C speed).

Page queues (for reclaim) are insertion-ordered dicts keyed by frame: moving a frame to the tail
of a queue is a delete and an insert, and the head is the least recently used frame.
"""

from __future__ import annotations

import enum
import mmap
import os
import threading
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any, Protocol

from vmo.errors import Status, ZxError

PAGE_SIZE: int = mmap.PAGESIZE
ZERO_FRAME = 0
_ZERO_PAGE_BYTES = bytes(PAGE_SIZE)


class FrameState(enum.IntEnum):
    FREE = 0
    ZERO = 1  # the shared zero page
    ALLOC = 2  # allocated, not yet placed in a page list
    OBJECT = 3  # owned by one page-list slot of one VmCowPages


class DirtyState(enum.IntEnum):
    """Dirty tracking of pages owned by a pager-backed root (seed: ``DirtyState``)."""

    UNTRACKED = 0
    CLEAN = 1
    DIRTY = 2
    AWAITING_CLEAN = 3


SPLIT_LEFT = 1
SPLIT_RIGHT = 2


class PageQueue(enum.IntEnum):
    NONE = 0
    ANONYMOUS = 1  # anonymous and discardable pages: never evicted one by one
    PAGER_BACKED = 2  # clean pager-backed pages, least recently used first
    PAGER_BACKED_DIRTY = 3  # dirty or awaiting clean: not evictable until written back
    WIRED = 4  # pinned
    PAGER_BACKED_INACTIVE = 5  # clean pages hinted DONT_NEED: evicted before the others


class Coherence(Protocol):
    """Keeps copies of frames held elsewhere (mapping windows) coherent with the frames.

    The kernel's bytes live in frames, but a mapping shows copies of them in its own window
    memory (see `vmo.mmu.mapping`). Before the kernel reads a frame, a copy that is *checked out*
    for writing must be recalled into it; before the kernel writes or frees a frame, read-only
    copies must be dropped. `PhysicalMemory` calls these hooks at every such access.
    """

    def before_read(self, frames: Sequence[int]) -> None: ...

    def before_write(self, frames: Sequence[int]) -> None: ...

    def on_free(self, frames: Sequence[int]) -> None: ...


def consecutive(frames: Sequence[int]) -> bool:
    """Are ``frames`` (distinct, as every caller's are) one ascending run f, f + 1, ...?

    Checked at C speed (distinct and sorted with last - first == n - 1 is exactly that), so
    that the bulk operations can write the columns as slices instead of frame by frame.
    """
    n = len(frames)
    if not n:
        return False
    if type(frames) is range:
        return frames.step == 1
    return frames[-1] - frames[0] == n - 1 and (n < 3 or sorted(frames) == list(frames))


class PhysicalMemory:
    """The frame allocator and the frame table of one kernel.

    Thread safety: allocation and freeing take ``_lock``; the metadata columns of a frame are
    written only by the holder of the hierarchy lock of the frame's owner (or by the allocator
    while the frame is not owned), so they need no lock of their own.
    """

    def __init__(self, memory: int) -> None:
        if memory < 2 * PAGE_SIZE:
            raise ZxError(Status.ERR_INVALID_ARGS, f"memory {memory} is smaller than two pages")
        self.total_frames = memory // PAGE_SIZE
        n = self.total_frames
        # The frame table costs about 31 bytes per frame up front; an arena larger than the
        # host's memory could never be backed anyway.
        host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if memory > host:
            raise ZxError(Status.ERR_NO_MEMORY,
                          f"arena of {memory} bytes is larger than this host's {host} bytes")
        self.fd = os.memfd_create("vmo-arena", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, n * PAGE_SIZE)
            self._mmap = mmap.mmap(self.fd, n * PAGE_SIZE, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, OverflowError, MemoryError, ValueError) as e:
            os.close(self.fd)
            raise ZxError(Status.ERR_NO_MEMORY, f"cannot create an arena of {memory} bytes: {e}") \
                from e
        self.physmap = memoryview(self._mmap)
        # The metadata columns (see the module docstring).
        self.state = bytearray(n)
        self.split = bytearray(n)
        self.dirty = bytearray(n)
        self.queue = bytearray(n)
        self.pin_count = array("H", bytes(2 * n))
        self.always_need = bytearray(n)  # the ALWAYS_NEED hint: skip when evicting
        self.offset = array("q", bytes(8 * n))
        self.owner: list[Any] = [None] * n
        # 0, 1, 2, ...: a run of consecutive frame numbers (or of page offsets below the
        # arena's size) as an array is one slice of this, where building it would convert
        # every int.
        self.ascending = array("q", range(n))
        self.state[ZERO_FRAME] = FrameState.ZERO
        # Freed frames (content unknown) are reused first, newest last; frames never handed out
        # are known to be zero, so allocating one needs no clearing.
        self._free: list[int] = []
        self._next_fresh = 1
        self._lock = threading.Lock()
        # Ordered per-queue membership, keyed by the IntEnum (equal to its int value).
        self.queues: dict[PageQueue, dict[int, None]] = {
            q: {} for q in PageQueue if q > PageQueue.ANONYMOUS
        }
        self.closed = False
        # Set by the mapping layer while any mapping exists; None costs nothing.
        self.coherence: Coherence | None = None
        # Statistics.
        self.allocated_total = 0
        self.freed_total = 0
        self.zeroed_total = 0

    # -- allocation -------------------------------------------------------------------------

    @property
    def free_frames(self) -> int:
        return len(self._free) + (self.total_frames - self._next_fresh)

    @property
    def used_frames(self) -> int:
        return self.total_frames - 1 - self.free_frames

    def alloc(self, count: int, *, zero: bool = True) -> list[int]:
        """Allocate ``count`` frames, all or none (``ERR_NO_MEMORY``).

        With ``zero`` the frames read as zeros; without it their content is undefined (the
        caller overwrites them). Frames come back in ascending runs where possible so that
        bulk copies see contiguous memory.
        """
        if count <= 0:
            return []
        if count == 1:
            return [self.alloc_one(zero=zero)]
        with self._lock:
            if count > self.free_frames:
                raise ZxError(
                    Status.ERR_NO_MEMORY,
                    f"cannot allocate {count} pages: {self.free_frames} of "
                    f"{self.total_frames} free",
                )
            take = min(count, len(self._free))
            reused = self._free[len(self._free) - take:]
            del self._free[len(self._free) - take:]
            reused.reverse()
            fresh_count = count - take
            fresh = list(range(self._next_fresh, self._next_fresh + fresh_count))
            self._next_fresh += fresh_count
            frames = reused + fresh
            state = self.state
            if consecutive(reused):
                state[reused[0]:reused[0] + take] = bytes([FrameState.ALLOC]) * take
            else:
                for f in reused:
                    state[f] = FrameState.ALLOC
            if fresh_count:
                state[fresh[0]:fresh[0] + fresh_count] = bytes([FrameState.ALLOC]) * fresh_count
            self.allocated_total += count
        if zero:
            for f in reused:
                self.zero_frame(f)
        return frames

    def alloc_one(self, *, zero: bool = True) -> int:
        """One frame (what page faults ask for): no slicing, no list to build."""
        with self._lock:
            if self._free:
                one = self._free.pop()
                was_freed = True
            elif self._next_fresh < self.total_frames:
                one = self._next_fresh
                self._next_fresh += 1
                was_freed = False
            else:
                raise ZxError(Status.ERR_NO_MEMORY,
                              f"cannot allocate 1 page: 0 of {self.total_frames} free")
            self.state[one] = FrameState.ALLOC
            self.allocated_total += 1
        if zero and was_freed:
            self.zero_frame(one)
        return one

    def free(self, frames: Iterable[int]) -> None:
        """Return frames to the allocator. Their metadata is reset here."""
        frames = list(frames)
        if not frames:
            return
        if self.coherence is not None:
            self.coherence.on_free(frames)
        with self._lock:
            state, split, dirty, owner, pin = (
                self.state, self.split, self.dirty, self.owner, self.pin_count)
            n = len(frames)
            # An exact check here (not `consecutive`, which trusts the frames to be distinct):
            # freeing one frame twice in a call must be caught, not freed as a neighbour.
            if (frames[0] > 0 and frames[-1] < self.total_frames
                    and frames == list(range(frames[0], frames[0] + n))):
                # One run: checks and resets as column slices.
                lo, hi = frames[0], frames[0] + n
                if state[lo:hi].count(FrameState.FREE) or state[lo:hi].count(FrameState.ZERO):
                    bad = next(f for f in frames if state[f] in (FrameState.FREE,
                                                                 FrameState.ZERO))
                    raise AssertionError(f"freeing frame {bad} in state "
                                         f"{FrameState(state[bad]).name}")
                queued = self.queue[lo:hi]
                if max(queued) > PageQueue.ANONYMOUS:
                    self._leave_queues(frames, queued)
                zeros = bytes(n)
                self.queue[lo:hi] = zeros
                state[lo:hi] = bytes([FrameState.FREE]) * n
                self.always_need[lo:hi] = zeros
                split[lo:hi] = zeros
                dirty[lo:hi] = zeros
                owner[lo:hi] = [None] * n
                pin[lo:hi] = array("H", bytes(2 * n))
            else:
                # Check everything before changing anything: a bad list frees nothing.
                if len(set(frames)) != n:
                    raise AssertionError(f"freeing a frame twice in one call: {frames}")
                for f in frames:
                    if not 0 < f < self.total_frames or state[f] in (FrameState.FREE,
                                                                     FrameState.ZERO):
                        where = (FrameState(state[f]).name if 0 <= f < self.total_frames
                                 else "out of range")
                        raise AssertionError(f"freeing frame {f} in state {where}")
                for f in frames:
                    q = self.queue[f]
                    if q > PageQueue.ANONYMOUS:
                        self.queues[q].pop(f, None)  # type: ignore[index]
                    self.queue[f] = 0
                    state[f] = FrameState.FREE
                    self.always_need[f] = 0
                    split[f] = 0
                    dirty[f] = 0
                    owner[f] = None
                    pin[f] = 0
            # Pushed in reverse so that the next allocation pops them in their original order.
            self._free.extend(reversed(frames))
            self.freed_total += len(frames)

    # -- ownership and queues ---------------------------------------------------------------

    def set_owner(self, frame: int, owner: Any, offset: int) -> None:
        self.state[frame] = FrameState.OBJECT
        self.owner[frame] = owner
        self.offset[frame] = offset

    def _leave_queues(self, frames: Sequence[int], queued: bytes | bytearray,
                      keep: int = -1) -> None:
        """Take ``frames`` (whose queue column values are ``queued``) out of the ordered
        queues they are in, except ``keep``."""
        b = queued[0]
        if queued.count(b) == len(queued):
            # All from one queue (the usual case): the pops run as one C-level loop.
            if b > PageQueue.ANONYMOUS and b != keep:
                deque(map(self.queues[b].pop, frames, repeat(None)), 0)  # type: ignore[index]
            return
        for f, b in zip(frames, queued, strict=True):
            if b > PageQueue.ANONYMOUS and b != keep:
                self.queues[b].pop(f, None)  # type: ignore[index]

    def place_many(self, frames: Sequence[int], owner: Any, first_offset: int,
                   queue: PageQueue, dirty: int) -> None:
        """Own ``frames[i]`` by ``owner`` at ``first_offset + i`` in one pass (bulk
        `set_owner` + `set_queue`); runs of consecutive frames are written as slices."""
        n = len(frames)
        if not n:
            return
        f0 = frames[0]
        if consecutive(frames):
            # Consecutive frames (what the allocator hands out): column slices, C speed.
            end = f0 + n
            self.state[f0:end] = bytes([FrameState.OBJECT]) * n
            self.split[f0:end] = bytes(n)
            self.dirty[f0:end] = bytes([dirty]) * n
            self.owner[f0:end] = [owner] * n
            self.offset[f0:end] = self.ascending_run(first_offset, n)
            old = bytes(self.queue[f0:end])
            self.queue[f0:end] = bytes([queue]) * n
        else:
            old = bytes([self.queue[f] for f in frames])
            state, split, dirt, own, offs, q = (self.state, self.split, self.dirty, self.owner,
                                                self.offset, self.queue)
            for i, f in enumerate(frames):
                state[f] = FrameState.OBJECT
                split[f] = 0
                dirt[f] = dirty
                own[f] = owner
                offs[f] = first_offset + i
                q[f] = queue
        if max(old) > PageQueue.ANONYMOUS:
            self._leave_queues(frames, old, keep=queue)
        if queue > PageQueue.ANONYMOUS:
            self.queues[queue].update(zip(frames, repeat(None)))

    def ascending_run(self, first: int, n: int) -> array[int]:
        """``array('q', range(first, first + n))``, sliced from `ascending` where it can be."""
        if first >= 0 and first + n <= self.total_frames:
            return self.ascending[first:first + n]
        return array("q", list(range(first, first + n)))

    def unown_many(self, frames: Sequence[int]) -> None:
        """Frames leave their page list but stay allocated (in flight between VMOs)."""
        n = len(frames)
        if not n:
            return
        state, own, q, split = self.state, self.owner, self.queue, self.split
        if consecutive(frames):
            lo, hi = frames[0], frames[0] + n
            queued = q[lo:hi]
            if max(queued) > PageQueue.ANONYMOUS:
                self._leave_queues(frames, queued)
            zeros = bytes(n)
            q[lo:hi] = zeros
            state[lo:hi] = bytes([FrameState.ALLOC]) * n
            own[lo:hi] = [None] * n
            split[lo:hi] = zeros
            return
        for f in frames:
            b = q[f]
            if b > PageQueue.ANONYMOUS:
                self.queues[b].pop(f, None)  # type: ignore[index]
            q[f] = 0
            state[f] = FrameState.ALLOC
            own[f] = None
            split[f] = 0

    def set_dirty_many(self, frames: Sequence[int], dirty: int, queue: PageQueue) -> None:
        """Set the dirty state of ``frames`` and move the unpinned ones to ``queue`` (those
        already in it keep their place)."""
        d, q, pin = self.dirty, self.queue, self.pin_count
        target = self.queues[queue]
        n = len(frames)
        if n > 1 and consecutive(frames):
            lo, hi = frames[0], frames[0] + n
            if pin[lo:hi].count(0) == n:
                # One run, none pinned: column slices, and the queue moves as C-level loops.
                d[lo:hi] = bytes([dirty]) * n
                old = q[lo:hi]
                if old.count(queue) != n:
                    moving = frames if queue not in old else [
                        f for f, b in zip(frames, old, strict=True) if b != queue]
                    if max(old) > PageQueue.ANONYMOUS:
                        self._leave_queues(frames, old, keep=queue)
                    q[lo:hi] = bytes([queue]) * n
                    target.update(zip(moving, repeat(None)))
                return
        for f in frames:
            d[f] = dirty
            if pin[f]:
                continue
            b = q[f]
            if b != queue:
                if b > PageQueue.ANONYMOUS:
                    self.queues[b].pop(f, None)  # type: ignore[index]
                q[f] = queue
                target[f] = None

    def touch_run(self, first: int, count: int) -> None:
        """`touch_many` of the consecutive frames ``first, first + 1, ...``: frames in no LRU
        queue (dirty, wired, anonymous) are found with one C-level scan and left alone."""
        queued = self.queue[first:first + count]
        if PageQueue.PAGER_BACKED in queued or PageQueue.PAGER_BACKED_INACTIVE in queued:
            self.touch_many(range(first, first + count))

    def touch_many(self, frames: Sequence[int]) -> None:
        """`touch` for many frames: exact LRU order, with the reinsertion done in one C call."""
        q = self.queue
        active = PageQueue.PAGER_BACKED
        inactive = PageQueue.PAGER_BACKED_INACTIVE
        n = len(frames)
        if n > 1 and frames[0] > 0 and consecutive(frames):
            queued = q[frames[0]:frames[0] + n]
            if queued.count(active) == n:
                # One run of active pages (a read of loaded content): to the tail in C loops.
                d = self.queues[active]
                deque(map(d.pop, frames), 0)
                d.update(zip(frames, repeat(None)))
                return
            if active not in queued and inactive not in queued:
                return  # none of them is in an LRU queue (dirty, wired or anonymous)
        moved = [f for f in frames if q[f] == active or q[f] == inactive]
        if not moved:
            return
        d = self.queues[active]
        for f in moved:
            if q[f] == inactive:
                self.queues[inactive].pop(f, None)
                q[f] = active
            else:
                del d[f]
        d.update(zip(moved, repeat(None)))

    def set_queue(self, frame: int, queue: PageQueue) -> None:
        """Move ``frame`` to the tail (most recently used end) of ``queue``.

        The ANONYMOUS queue is only a column value: its pages are never reclaimed one by one,
        so keeping them in an ordered dict would cost memory for nothing.
        """
        old = self.queue[frame]
        if old > PageQueue.ANONYMOUS:
            self.queues[old].pop(frame, None)  # type: ignore[index]
        if queue > PageQueue.ANONYMOUS:
            self.queues[queue][frame] = None
        self.queue[frame] = queue

    def touch(self, frame: int) -> None:
        """Record an access: a frame in a queue moves to its most recently used end."""
        q = self.queue[frame]
        if q == PageQueue.PAGER_BACKED_INACTIVE:
            # Used again after a DONT_NEED hint: back among the active pages.
            self.set_queue(frame, PageQueue.PAGER_BACKED)
        elif q > PageQueue.ANONYMOUS:
            d = self.queues[q]  # type: ignore[index]
            d.pop(frame, None)
            d[frame] = None

    def lru(self, queue: PageQueue) -> Iterator[int]:
        """Frames of ``queue``, least recently used first (a snapshot)."""
        return iter(list(self.queues[queue]))

    # -- contents ---------------------------------------------------------------------------

    def view(self, frame: int, start: int = 0, end: int = PAGE_SIZE) -> memoryview:
        base = frame * PAGE_SIZE
        return self.physmap[base + start: base + end]

    def run_view(self, first_frame: int, count: int) -> memoryview:
        base = first_frame * PAGE_SIZE
        return self.physmap[base: base + count * PAGE_SIZE]

    def zero_frame(self, frame: int) -> None:
        if self.coherence is not None:
            self.coherence.before_write((frame,))
        base = frame * PAGE_SIZE
        self.physmap[base: base + PAGE_SIZE] = _ZERO_PAGE_BYTES
        self.zeroed_total += 1

    def copy_frame(self, dst: int, src: int) -> None:
        if src == ZERO_FRAME:
            self.zero_frame(dst)
            return
        if self.coherence is not None:
            self.coherence.before_read((src,))
            self.coherence.before_write((dst,))
        d, s = dst * PAGE_SIZE, src * PAGE_SIZE
        self.physmap[d: d + PAGE_SIZE] = self.physmap[s: s + PAGE_SIZE]

    def is_zero(self, frame: int) -> bool:
        if self.coherence is not None:
            self.coherence.before_read((frame,))
        base = frame * PAGE_SIZE
        return self._mmap[base: base + PAGE_SIZE] == _ZERO_PAGE_BYTES

    # -- accounting -------------------------------------------------------------------------

    def metadata_bytes_per_frame(self) -> float:
        """Python-side bytes of frame metadata per frame (the columns, not the pages)."""
        n = self.total_frames
        fixed = len(self.state) + len(self.split) + len(self.dirty) + len(self.queue)
        fixed += len(self.always_need)
        fixed += (self.pin_count.itemsize + self.offset.itemsize
                  + self.ascending.itemsize) * n
        fixed += 8 * n  # one pointer per slot of the owner list
        return fixed / n

    def frames_in_state(self, state: FrameState) -> int:
        return self.state.count(state)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.physmap.release()
            self._mmap.close()
        except BufferError:
            # A memoryview of a frame is still alive somewhere; the mapping is freed with it.
            pass
        os.close(self.fd)
