"""The swap file of one region: a sparse file indexed by page.

Model: crosvm ``swap/src/file.rs``. Page ``i`` of the VMO is stored at byte ``i * PAGE_SIZE`` of
the file; pages never written are holes, so the file costs disk only for what was swapped out.
A `PresentList` says which pages the file holds *for the VMO now*: a page read back by a fault
or by swap-in is marked absent but its bytes stay on disk (crosvm does the same), because the
next trim can then find that a page staged again is unchanged (clean) and drop it from staging
instead of writing it once more. Bytes are erased (a hole punched) only when the page itself is
gone -- decommitted, zeroed, cut off by a shrink -- or when swap-in completes (then the
whole file goes, truncated in the background: `vmo.pager.swap.file_truncator`).

The file is created unnamed (``O_TMPFILE``) in the swap directory where the filesystem allows
it, else created and unlinked at once: either way no file is left behind, whatever happens to
this process.

Errors from writing (``ENOSPC``, ``EIO``) propagate as `OSError` to the handler, which keeps the
pages in staging and records the failure.
"""

from __future__ import annotations

import errno
import os
import tempfile

import vmo.pager.swap.frame_io as frame_io
from vmo.mmu.uffd import fallocate_punch_hole
from vmo.pager.swap.present_list import PresentList
from vmo.pmm import PAGE_SIZE, PhysicalMemory


def open_unnamed_file(directory: str) -> int:
    """A read-write file in ``directory`` that has no name (``O_TMPFILE``, or create-and-unlink
    where the filesystem does not support it). Raises `OSError`."""
    flags = os.O_RDWR | os.O_CLOEXEC
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            return os.open(directory, flags | tmpfile, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    fd, path = tempfile.mkstemp(prefix="vmo-swap-", dir=directory)
    os.unlink(path)
    return fd


class SwapFile:
    """The swap file of one region of ``num_pages`` pages (see the module docstring)."""

    def __init__(self, directory: str, num_pages: int) -> None:
        self.fd = open_unnamed_file(directory)
        try:
            os.ftruncate(self.fd, num_pages * PAGE_SIZE)
        except OSError:
            os.close(self.fd)
            raise
        self.present = PresentList(num_pages)
        self.prefetched_end = 0  # pages below this were advised to the page cache already

    @property
    def num_pages(self) -> int:
        return len(self.present)

    @property
    def present_pages(self) -> int:
        return self.present.present_pages

    def write_from_fd(self, src_fd: int, start: int, end: int) -> None:
        """Write pages ``[start, end)`` from the same pages of ``src_fd`` (the staging memfd),
        then mark them present. Raises `OSError`; nothing is marked present then."""
        frame_io.copy_between_fds(src_fd, start * PAGE_SIZE, self.fd, start * PAGE_SIZE,
                                  (end - start) * PAGE_SIZE)
        self.present.mark_as_present(start, end)

    def read_into_frames(self, pmm: PhysicalMemory, idx: int, frames: list[int]) -> None:
        """Copy pages ``[idx, idx + len(frames))`` into ``frames``. Raises `OSError`."""
        frame_io.fill_frames_from_file(pmm, frames, self.fd, idx * PAGE_SIZE)

    def read(self, start: int, end: int) -> bytes:
        """The bytes on disk for pages ``[start, end)`` (present or not; holes read zeros)."""
        return os.pread(self.fd, (end - start) * PAGE_SIZE, start * PAGE_SIZE)

    def clear_range(self, start: int, end: int) -> int:
        """The pages are back in memory: absent from now on, but their bytes stay on disk."""
        return self.present.clear_range(start, end)

    def erase_from_disk(self, start: int, end: int) -> int:
        """The pages are gone: absent, and their bytes punched out of the file."""
        end = min(end, self.num_pages)
        if end <= start:
            return 0
        cleared = self.present.clear_range(start, end)
        if self.next_data(start, end) is not None:
            fallocate_punch_hole(self.fd, start * PAGE_SIZE, (end - start) * PAGE_SIZE)
        return cleared

    def mark_as_present(self, start: int, end: int) -> None:
        self.present.mark_as_present(start, end)

    def next_data(self, start: int, end: int) -> tuple[int, int] | None:
        """The first run of pages in ``[start, end)`` that hold bytes on disk (``SEEK_DATA``,
        ``SEEK_HOLE``: crosvm's ``find_next_data``), or None."""
        try:
            data = os.lseek(self.fd, start * PAGE_SIZE, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return None
            raise
        first = data // PAGE_SIZE
        if first >= end:
            return None
        hole = os.lseek(self.fd, data, os.SEEK_HOLE)
        return first, min(end, -(-hole // PAGE_SIZE))

    def prefetch(self, start: int, end: int) -> None:
        """Ask the kernel to read pages ``[start, end)`` into its page cache in the background
        (``posix_fadvise(WILLNEED)``; crosvm locks a budget of them in memory instead)."""
        if end > start:
            os.posix_fadvise(self.fd, start * PAGE_SIZE, (end - start) * PAGE_SIZE,
                             os.POSIX_FADV_WILLNEED)
            # Advice already given is not repeated on the next step of the same swap-in.
            self.prefetched_end = max(self.prefetched_end, end)

    def resize(self, num_pages: int) -> None:
        if num_pages < self.num_pages:
            self.erase_from_disk(num_pages, self.num_pages)
        self.present.resize(num_pages)
        os.ftruncate(self.fd, num_pages * PAGE_SIZE)

    def allocated_bytes(self) -> int:
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
