"""Copies between arena frames and files, without an intermediate buffer.

The swap layer moves pages between three places: frames of the arena (the physmap), the staging
memfd and the swap file. Each move is one vectored system call over memoryviews of the
physmap (``pwritev`` out of frames, ``preadv`` into them; reading uses the core's
`vmo.cow_pages.fill_frames_from_fd`), or ``sendfile`` between the two files, so Python never
copies the bytes itself.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from vmo.pmm import PAGE_SIZE, PhysicalMemory, consecutive

#: Most iovecs one ``pwritev`` accepts (Linux's UIO_MAXIOV).
IOV_MAX = 1024


def frame_runs(frames: Sequence[int]) -> list[tuple[int, int]]:
    """``(first_frame, count)`` for each run of consecutive frame numbers, in order."""
    runs: list[tuple[int, int]] = []
    if not frames:
        return runs
    if consecutive(frames):
        return [(frames[0], len(frames))]  # the usual case, checked at C speed
    first = prev = frames[0]
    for f in frames[1:]:
        if f == prev + 1:
            prev = f
            continue
        runs.append((first, prev - first + 1))
        first = prev = f
    runs.append((first, prev - first + 1))
    return runs


def frame_views(pmm: PhysicalMemory, frames: Sequence[int]) -> list[memoryview]:
    """One physmap memoryview per run of consecutive frames."""
    physmap = pmm.physmap
    return [physmap[f * PAGE_SIZE:(f + n) * PAGE_SIZE] for f, n in frame_runs(frames)]


def write_frames_to_fd(pmm: PhysicalMemory, frames: Sequence[int], fd: int, offset: int) -> None:
    """Write the pages of ``frames`` to ``fd`` at ``offset`` (``pwritev``, all of it, or raise
    `OSError`). The caller recalls mapped copies first (`vmo.pmm.Coherence.before_read`)."""
    views = frame_views(pmm, frames)
    i = 0
    while i < len(views):
        batch = views[i:i + IOV_MAX]
        want = sum(len(v) for v in batch)
        n = os.pwritev(fd, batch, offset)
        if n <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += n
        if n < want:
            # A partial write: resume after the bytes written, inside the batch.
            rest: list[memoryview] = []
            skip = n
            for v in batch:
                if skip >= len(v):
                    skip -= len(v)
                    continue
                rest.append(v[skip:])
                skip = 0
            views = rest + views[i + len(batch):]
            i = 0
            continue
        i += len(batch)


def copy_between_fds(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes of ``src`` at ``src_offset`` to ``dst`` at ``dst_offset`` inside the
    kernel (``sendfile``), falling back to ``pread``/``pwrite`` where sendfile cannot be used.
    Raises `OSError` if the destination cannot take them (``ENOSPC``, ``EIO``, ...)."""
    done = 0
    use_sendfile = True
    while done < length:
        n = 0
        if use_sendfile:
            try:
                os.lseek(dst, dst_offset + done, os.SEEK_SET)
                n = os.sendfile(dst, src, src_offset + done, length - done)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                use_sendfile = False
                continue
        else:
            data = os.pread(src, min(length - done, 1 << 20), src_offset + done)
            if data:
                n = os.pwrite(dst, data, dst_offset + done)
        if n <= 0:
            raise OSError(errno.EIO, f"copy to fd {dst} made no progress at offset "
                                     f"{dst_offset + done}")
        done += n
