"""The page handler: where each page of the swap source's VMOs is, and the moves between places.

Model: crosvm ``swap/src/page_handler.rs``. A page of a VMO backed by the swap source is in
exactly one of four places:

- *resident*: a frame in the VMO's page list (the arena);
- *staged*: in the region's staging memfd (`StagingMemory`);
- *swapped*: in the region's swap file (`SwapFile`);
- *nowhere*: never populated, or removed (decommitted, zeroed, cut off, trimmed as zero); it
  reads zeros. A zero page the VMO shows as a zero marker is also nowhere: it costs nothing.

The moves, each made under the hierarchy lock of the VMO (methods ending in ``_locked``):

- `serve_locked` -- a page request (a read, a write, a fault through a mapping, COMMIT) for
  absent pages: supply each from staging, else from the swap file, else zeros (crosvm's
  ``handle_page_fault``: ``copied_from_staging``, ``copied_from_file``, ``zeroed``; pages found
  present already are ``redundant``). Pages brought back are Dirty: the arena holds their only
  copy, so the kernel must never evict them as if a source could supply them again. They are
  placed Dirty in one step (`CowPages.supply_pages_locked` with ``dirty=True``), into frames
  allocated in ascending order (one run: one ``preadv`` iovec, column slices in the frame
  table).
- `move_to_staging_locked` -- copy the resident pages into staging and free their frames, in
  batches of 2 MiB (crosvm's THP-sized batches): for each batch, mapped copies are recalled and
  dropped (a range change), the frames are copied out, removed from the page list, punched out
  of the arena memfd (``fallocate(PUNCH_HOLE)``: the host gets the memory back) and freed.
  Zero markers and pinned pages stay. Over a source below (stacking), Clean pages are dropped
  instead: the source below can supply them again.
- `swap_out_locked` -- write the first run of staged pages to the swap file and drop it from
  staging (crosvm's ``swap_out``). A failed write changes nothing: the pages stay staged.
- `swap_in_locked` -- bring the first run of staged pages back, else the first run of swapped
  pages, after asking the kernel to read ahead in the file (crosvm's ``SwapInContext``).
- `trim_locked` -- drop staged pages that are all zeros, and staged pages equal to the bytes
  the swap file still holds for them (then the file copy is present again): crosvm's
  ``trim_pages``.
- `remove_locked` -- pages removed from the VMO (DECOMMIT, ZERO, shrink) lose their staged and
  swapped copies (crosvm's ``handle_page_remove``).

The handler holds no lock of its own except the one guarding its counters.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from vmo.cow_pages import RangeChangeOp
from vmo.errors import Status, ZxError
from vmo.mmu.uffd import fallocate_punch_hole
from vmo.page_list import EMPTY, MARKER
from vmo.pager.swap.file_truncator import FileTruncator
from vmo.pager.swap.frame_io import frame_runs
from vmo.pager.swap.region import Region
from vmo.pager.swap.state import COUNTERS
from vmo.pmm import PAGE_SIZE, DirtyState, PhysicalMemory

if TYPE_CHECKING:
    from vmo.cow_pages import CowPages

#: Pages moved to staging per batch (crosvm removes guest memory in THP-sized batches).
MOVE_BATCH_PAGES = (2 << 20) // PAGE_SIZE
#: Bytes of the swap file read ahead of swap-in (crosvm's mlock budget serves the same end).
PREFETCH_BYTES = 16 << 20
#: Staged pages trim reads per system call.
TRIM_CHUNK_PAGES = 64

_ZERO_PAGE = bytes(PAGE_SIZE)


def absent_runs(node: CowPages, start: int, end: int) -> list[tuple[int, int]]:
    """The runs of ``[start, end)`` whose slots hold nothing (neither a frame nor a marker)."""
    if node.page_list.is_empty_range(start, end):
        return [(start, end)]
    dense = node.page_list.dense(start, end)
    runs: list[tuple[int, int]] = []
    run_start = -1
    for i, v in enumerate(dense):
        if v == EMPTY:
            if run_start < 0:
                run_start = start + i
        elif run_start >= 0:
            runs.append((run_start, start + i))
            run_start = -1
    if run_start >= 0:
        runs.append((run_start, end))
    return runs


def claim_tail_locked(node: CowPages) -> None:
    """Make the source answer for every page of the node.

    A grown VMO's new tail lies past its supply-zero offset, where the core shows zeros without
    asking the source. Pages written there would be lost once moved out (the next access would
    not ask for them back), so before anything moves, the supply-zero offset is put at the end:
    the gaps then come from the source, which answers zeros for them (it holds nothing there
    -- a shrink dropped it all).
    """
    if node.supply_zero_offset < node.size:
        node.supply_zero_offset = node.size
        node.awaiting_clean_zero_range_end = 0


class PageHandler:
    """The moves of pages between the arena, staging and the swap file (module docstring)."""

    def __init__(self) -> None:
        self._counters_lock = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.truncator = FileTruncator()
        #: For stacking: reads the pages of the source below into frames, or None.
        self.read_below: Callable[[Region, int, list[int]], None] | None = None

    def count(self, **deltas: int) -> None:
        with self._counters_lock:
            for key, delta in deltas.items():
                self.counters[key] += delta

    def snapshot(self) -> dict[str, int]:
        with self._counters_lock:
            return dict(self.counters)

    # ---------------------------------------------------------------- supplying

    def _supply_locked(self, region: Region, start: int, slots: list[int], *,
                       dirty: bool) -> int:
        """Place ``slots`` (frames, or MARKERs for zeros) at ``start`` where the node holds
        nothing; frames for slots that are taken meanwhile are freed. Returns the slots
        placed. Placed frames are Dirty when ``dirty`` (the arena holds their only copy),
        placed so directly (`CowPages.supply_pages_locked`)."""
        node = region.node
        rejected = node.supply_pages_locked(start, slots, dirty=dirty)
        if rejected:
            node.pmm.free(rejected)
            self.count(redundant_pages=len(rejected))
        return len(slots) - len(rejected)

    def _alloc_locked(self, node: CowPages, count: int) -> list[int]:
        # Sorted: the frames a move freed come back from the allocator as runs of one move
        # batch each, last batch first; in order they are mostly one run, which the reads
        # fill with one iovec and the page list and frame table take as slices.
        frames = node.pmm.alloc(count, zero=False)
        frames.sort()
        return frames

    def _from_staging_locked(self, region: Region, start: int, end: int) -> int:
        staging = region.staging
        assert staging is not None
        frames = self._alloc_locked(region.node, end - start)
        try:
            staging.read_into_frames(region.node.pmm, start, frames)
        except BaseException:
            region.node.pmm.free(frames)
            raise
        self._supply_locked(region, start, frames, dirty=True)
        staging.clear_range(start, end)
        self.count(copied_from_staging_pages=end - start)
        return end - start

    def _from_file_locked(self, region: Region, start: int, end: int) -> int:
        file = region.file
        assert file is not None
        frames = self._alloc_locked(region.node, end - start)
        try:
            file.read_into_frames(region.node.pmm, start, frames)
        except BaseException:
            region.node.pmm.free(frames)
            raise
        self._supply_locked(region, start, frames, dirty=True)
        # The bytes stay on disk: a later trim can find the page unchanged (crosvm).
        file.clear_range(start, end)
        self.count(copied_from_file_pages=end - start, bytes_read=(end - start) * PAGE_SIZE)
        return end - start

    def _from_below_locked(self, region: Region, start: int, end: int) -> None:
        assert self.read_below is not None
        frames = self._alloc_locked(region.node, end - start)
        try:
            self.read_below(region, start, frames)
        except BaseException:
            region.node.pmm.free(frames)
            raise
        # Clean: the source below holds the same bytes, so these may be evicted and read again.
        self._supply_locked(region, start, frames, dirty=False)

    def serve_locked(self, region: Region, start: int, end: int) -> None:
        """Supply the absent pages of ``[start, end)``: from staging, else the swap file, else
        zeros (or the source below, when stacked). Raises `ZxError` (``ERR_NO_MEMORY``,
        ``ERR_IO``); what was supplied before the failure stays."""
        node = region.node
        claim_tail_locked(node)
        region.sync_size_locked()
        end = min(end, node.size)
        if end <= start:
            return
        runs = absent_runs(node, start, end)
        present = (end - start) - sum(e - s for s, e in runs)
        if present:
            self.count(redundant_pages=present)
        for a, b in runs:
            pieces: list[tuple[int, int, int]] = []  # (start, end, kind): 2 staged, 1 swapped
            if region.staging is not None and region.staging.present_pages:
                pieces += [(s, e, 2) for s, e in region.staging.present.runs(a, b)]
            if region.file is not None and region.file.present_pages:
                pieces += [(s, e, 1) for s, e in region.file.present.runs(a, b)]
            pieces.sort()
            pos = a
            for s, e, kind in pieces:
                if pos < s:
                    self._zero_or_below_locked(region, pos, s)
                if kind == 2:
                    self._from_staging_locked(region, s, e)
                else:
                    self._from_file_locked(region, s, e)
                pos = e
            if pos < b:
                self._zero_or_below_locked(region, pos, b)

    def _zero_or_below_locked(self, region: Region, start: int, end: int) -> None:
        if self.read_below is not None:
            self._from_below_locked(region, start, end)
            return
        self._supply_locked(region, start, [MARKER] * (end - start), dirty=False)
        self.count(zeroed_pages=end - start)

    # ---------------------------------------------------------------- removing

    def remove_locked(self, region: Region, start: int, end: int) -> None:
        """Pages ``[start, end)`` left the VMO (DECOMMIT, ZERO, shrink): drop their staged and
        swapped copies (crosvm's ``handle_page_remove``)."""
        if region.staging is not None:
            region.staging.clear_range(start, end)
        if region.file is not None:
            region.file.erase_from_disk(start, end)

    # ---------------------------------------------------------------- moving out

    def move_to_staging_locked(self, region: Region) -> int:
        """Move the node's resident pages to staging (see the module docstring). Returns the
        pages moved (over a source below: staged plus dropped clean pages). Raises `OSError`
        if staging cannot take a batch; that batch and the ones after it stay resident."""
        node = region.node
        claim_tail_locked(node)
        pmm = node.pmm
        runs = _resident_runs(node)
        if not runs:
            return 0
        staging = region.staging_locked()
        moved = 0
        for batch in _batches(runs, MOVE_BATCH_PAGES):
            # Recall checked-out mapping copies into the frames and drop every mapped copy:
            # from here on a store faults, and its fault waits for the lock we hold.
            last_start, last_frames = batch[-1]
            node.range_change_locked(batch[0][0], last_start + len(last_frames),
                                     RangeChangeOp.UNMAP)
            if pmm.coherence is not None:
                pmm.coherence.before_read([f for _, frames in batch for f in frames])
            if self.read_below is not None:
                clean, batch = _split_clean(pmm, batch)
                if clean:
                    dropped = self._evict_locked(node, clean)
                    self.count(dropped_clean_pages=dropped)
                    moved += dropped
            for start, frames in batch:
                staging.copy_from_frames(pmm, start, frames)
            moved += self._evict_locked(node, batch)
        node.hier.generation += 1
        return moved

    @staticmethod
    def _evict_locked(node: CowPages, runs: list[tuple[int, list[int]]]) -> int:
        """Take the runs of frames out of the node's page list and give their frames back to
        the arena and to the host. Returns the pages removed."""
        pmm = node.pmm
        frames: list[int] = []
        for start, run in runs:
            removed = node.page_list.clear_range(start, start + len(run))
            assert removed == run, "the page list changed under the hierarchy lock"
            frames += run
        frames.sort()
        for first, count in frame_runs(frames):
            fallocate_punch_hole(pmm.fd, first * PAGE_SIZE, count * PAGE_SIZE)
        pmm.free(frames)
        node.eviction_events += len(frames)
        return len(frames)

    def swap_out_locked(self, region: Region, max_pages: int) -> int:
        """Write the first run of at most ``max_pages`` staged pages to the swap file and drop
        it from staging. Returns the pages written (0: nothing staged). Raises `OSError` if the
        file cannot take them; they stay staged."""
        staging = region.staging
        if staging is None or not staging.present_pages:
            return 0
        region.sync_size_locked()
        run = staging.first_data_range(max_pages)
        if run is None:
            return 0
        start, end = run
        file = region.file_locked()
        file.write_from_fd(staging.fd, start, end)
        staging.clear_range(start, end)
        self.count(bytes_written=(end - start) * PAGE_SIZE)
        return end - start

    # ---------------------------------------------------------------- moving in

    def swap_in_locked(self, region: Region, max_pages: int) -> int:
        """Bring back the first run of at most ``max_pages`` staged pages, else of swapped
        pages. Returns the pages brought back (0: nothing is out). Raises `ZxError`."""
        region.sync_size_locked()
        staging = region.staging
        if staging is not None and staging.present_pages:
            run = staging.first_data_range(max_pages)
            if run is not None:
                n = self._from_staging_locked(region, *run)
                self.count(swap_in_pages=n)
                return n
        file = region.file
        if file is None or not file.present_pages:
            return 0
        run = file.present.first_data_range(max_pages)
        if run is None:
            return 0
        start, end = run
        # Read ahead: the runs after this one, up to the prefetch budget, start loading into
        # the page cache while this one is copied.
        budget = PREFETCH_BYTES // PAGE_SIZE
        for s, e in file.present.runs(max(end, file.prefetched_end)):
            if budget <= 0:
                break
            e = min(e, s + budget)
            try:
                file.prefetch(s, e)
            except OSError:
                break  # advice only
            budget -= e - s
        n = self._from_file_locked(region, start, end)
        self.count(swap_in_pages=n)
        if not file.present_pages:
            # Everything is back: give the disk back, off this path (crosvm's FileTruncator).
            self.truncator.submit(region.retire_file_locked())
        return n

    # ---------------------------------------------------------------- trimming

    def trim_locked(self, region: Region, start: int, max_pages: int) -> tuple[int, int, int]:
        """Examine staged pages from page ``start``, at most ``max_pages`` of them: drop those
        that are all zeros (and their stale swap-file bytes), and those equal to the bytes the
        swap file still holds for them (marking the file copy present again). Returns
        ``(trimmed, examined, next_start)``; ``next_start`` is the node's size once the end
        was reached."""
        staging = region.staging
        size = region.node.size
        if staging is None or not staging.present_pages:
            return 0, 0, size
        region.sync_size_locked()
        trimmed = examined = 0
        for run_start, run_end in staging.present.runs(start):
            s = run_start
            while s < run_end:
                if examined >= max_pages:
                    return trimmed, examined, s
                e = min(run_end, s + TRIM_CHUNK_PAGES, s + max_pages - examined)
                trimmed += self._trim_chunk_locked(region, s, e)
                examined += e - s
                s = e
        return trimmed, examined, size

    def _trim_chunk_locked(self, region: Region, start: int, end: int) -> int:
        staging = region.staging
        assert staging is not None
        swap_file = region.file
        data = memoryview(staging.read(start, end))
        on_disk: tuple[int, int] | None = None
        disk: memoryview | None = None
        if swap_file is not None:
            on_disk = swap_file.next_data(start, end)
            if on_disk is not None:
                disk = memoryview(swap_file.read(start, end))
        zero: list[int] = []
        clean: list[int] = []
        for i in range(end - start):
            page = data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
            if page == _ZERO_PAGE:
                zero.append(start + i)
            elif disk is not None and page == disk[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]:
                # Not zero, and equal to the bytes on disk: those are data, not a hole.
                clean.append(start + i)
        for s, e in _index_runs(zero):
            staging.clear_range(s, e)
            if swap_file is not None and on_disk is not None:
                swap_file.erase_from_disk(s, e)
        for s, e in _index_runs(clean):
            staging.clear_range(s, e)
            assert swap_file is not None
            swap_file.mark_as_present(s, e)
        self.count(trimmed_zero_pages=len(zero), trimmed_clean_pages=len(clean))
        return len(zero) + len(clean)


def _resident_runs(node: CowPages) -> list[tuple[int, list[int]]]:
    """``(first_offset, frames)`` for each run of consecutive offsets of the node that hold
    unpinned frames (zero markers and pinned pages split runs and stay). Of a hidden root (a
    snapshot's; see `vmo.cow_pages.CowPages.acts_anonymous`), pages that carry a split bit
    stay too: the bit says which side forked the page, and a staged copy could not keep it.
    They are the pages one side already replaced, seen by the other side only."""
    pin = node.pmm.pin_count if node.pinned_pages else None
    split = node.pmm.split if node.hidden else None
    runs: list[tuple[int, list[int]]] = []
    for seg_start, slots in node.page_list.segments(0, node.size):
        if pin is None and split is None and min(slots) > 0:
            runs.append((seg_start, slots.tolist()))  # the usual case: one C-level copy
            continue
        cur: list[int] = []
        cur_start = 0
        for i, f in enumerate(slots):
            if f > 0 and (pin is None or not pin[f]) and (split is None or not split[f]):
                if not cur:
                    cur_start = seg_start + i
                cur.append(f)
            elif cur:
                runs.append((cur_start, cur))
                cur = []
        if cur:
            runs.append((cur_start, cur))
    return runs


def _batches(runs: list[tuple[int, list[int]]], size: int
             ) -> list[list[tuple[int, list[int]]]]:
    """The runs cut into batches of at most ``size`` pages (a run may be split)."""
    out: list[list[tuple[int, list[int]]]] = []
    batch: list[tuple[int, list[int]]] = []
    room = size
    for start, frames in runs:
        i = 0
        while i < len(frames):
            take = min(room, len(frames) - i)
            batch.append((start + i, frames[i:i + take]))
            i += take
            room -= take
            if room == 0:
                out.append(batch)
                batch, room = [], size
    if batch:
        out.append(batch)
    return out


def _split_clean(pmm: PhysicalMemory, runs: list[tuple[int, list[int]]]
                 ) -> tuple[list[tuple[int, list[int]]], list[tuple[int, list[int]]]]:
    """The runs split into runs of Clean frames and runs of the others."""
    dirty = pmm.dirty
    clean: list[tuple[int, list[int]]] = []
    other: list[tuple[int, list[int]]] = []
    for start, frames in runs:
        i = 0
        while i < len(frames):
            is_clean = dirty[frames[i]] == DirtyState.CLEAN
            j = i + 1
            while j < len(frames) and (dirty[frames[j]] == DirtyState.CLEAN) == is_clean:
                j += 1
            (clean if is_clean else other).append((start + i, frames[i:j]))
            i = j
    return clean, other


def _index_runs(idxs: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in idxs:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def io_error(e: OSError, what: str) -> ZxError:
    """The `ZxError` for a failed swap-file or staging operation."""
    status = Status.ERR_NO_SPACE if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) \
        else Status.ERR_IO
    return ZxError(status, f"{what}: {e}")
