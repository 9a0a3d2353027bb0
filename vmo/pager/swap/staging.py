"""Staging memory: pages moved out of the arena, before they are written to the swap file.

Model: crosvm ``swap/src/staging.rs``. The staging memory of one region (one VMO) is a memfd
indexed by page: page ``i`` of the VMO lives at byte ``i * PAGE_SIZE`` when it is staged. The
memfd is sparse -- only staged pages hold memory -- and a page leaves it by punching a hole
(``fallocate(PUNCH_HOLE)``, crosvm's ``MADV_REMOVE``), so the host gets the memory back as soon
as the page is swapped out, trimmed, or taken back by a fault. A `PresentList` says which pages
are staged.

Moving a page into staging is a copy out of its arena frame (``pwritev`` from the physmap)
made by the handler while the VMO's hierarchy lock is held, so no store can land between the
copy and the frame being freed.

Unlike crosvm, which carves every region out of one staging memfd at fixed offsets, each region
has a memfd of its own: VMOs can be resized, and a region that grows must not collide with the
next one.
"""

from __future__ import annotations

import os

from vmo.mmu.uffd import fallocate_punch_hole
from vmo.pager.swap.frame_io import fill_frames_from_file, write_frames_to_fd
from vmo.pager.swap.present_list import PresentList
from vmo.pmm import PAGE_SIZE, PhysicalMemory


class StagingMemory:
    """The staging memfd of one region of ``num_pages`` pages."""

    def __init__(self, num_pages: int, name: str = "vmo-swap-staging") -> None:
        self.present = PresentList(num_pages)
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, num_pages * PAGE_SIZE)
        except OSError:
            os.close(self.fd)
            raise

    @property
    def num_pages(self) -> int:
        return len(self.present)

    @property
    def present_pages(self) -> int:
        return self.present.present_pages

    def copy_from_frames(self, pmm: PhysicalMemory, idx: int, frames: list[int]) -> None:
        """Stage the pages of ``frames`` as pages ``[idx, idx + len(frames))``."""
        write_frames_to_fd(pmm, frames, self.fd, idx * PAGE_SIZE)
        self.present.mark_as_present(idx, idx + len(frames))

    def read_into_frames(self, pmm: PhysicalMemory, idx: int, frames: list[int]) -> None:
        """Copy staged pages ``[idx, idx + len(frames))`` into ``frames`` (not owned by anyone
        yet). Raises `OSError` if the memfd cannot be read."""
        fill_frames_from_file(pmm, frames, self.fd, idx * PAGE_SIZE)

    def page_content(self, idx: int) -> bytes | None:
        """The bytes of staged page ``idx``, or None if it is not staged."""
        if not self.present.is_present(idx):
            return None
        return os.pread(self.fd, PAGE_SIZE, idx * PAGE_SIZE)

    def read(self, start: int, end: int) -> bytes:
        """The bytes of pages ``[start, end)``, staged or not (absent pages read zeros)."""
        return os.pread(self.fd, (end - start) * PAGE_SIZE, start * PAGE_SIZE)

    def clear_range(self, start: int, end: int) -> int:
        """Drop pages ``[start, end)`` from staging and give their memory back. Returns how
        many were staged."""
        end = min(end, self.num_pages)
        if end <= start:
            return 0
        cleared = self.present.clear_range(start, end)
        if cleared:
            fallocate_punch_hole(self.fd, start * PAGE_SIZE, (end - start) * PAGE_SIZE)
        return cleared

    def first_data_range(self, max_pages: int) -> tuple[int, int] | None:
        return self.present.first_data_range(max_pages)

    def resize(self, num_pages: int) -> None:
        """Follow the VMO's size; pages cut off are dropped (the caller clears them first)."""
        if num_pages < self.num_pages:
            self.clear_range(num_pages, self.num_pages)
        self.present.resize(num_pages)
        os.ftruncate(self.fd, num_pages * PAGE_SIZE)

    def allocated_bytes(self) -> int:
        """Memory the memfd holds (``st_blocks``): what staging costs the host."""
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
