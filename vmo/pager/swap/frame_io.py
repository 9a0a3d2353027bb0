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


def fill_frames_from_file(pmm: PhysicalMemory, frames: Sequence[int], fd: int,
                          offset: int) -> None:
    """Copy ``len(frames)`` pages of ``fd`` from byte ``offset`` into ``frames`` (frames no VMO
    owns yet: nothing sees them meanwhile). Bytes past the end of the file become zeros.
    Raises `OSError`.

    The copy runs in the kernel: ``sendfile`` into the arena memfd, through a descriptor of
    the arena opened for this call (its own file position, so concurrent calls never share
    one). Written through the file, the arena's pages are allocated by the copy, where a read
    into the physmap would fault each of them in first, zero-filled, and then overwrite it
    (about 1.5 times slower on this kind of host; bench/bench_swap.py). Where the arena cannot
    be reopened or sendfile cannot write it, ``preadv`` into the physmap does the same."""
    try:
        arena = os.open(f"/proc/self/fd/{pmm.fd}", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        arena = -1
    try:
        pos = 0
        for first, count in frame_runs(frames):
            want = count * PAGE_SIZE
            src = offset + pos * PAGE_SIZE
            done = _sendfile_run(arena, first * PAGE_SIZE, fd, src, want) if arena >= 0 else 0
            if done < want:
                # sendfile could not (or the file ended): read the rest into the physmap.
                base = first * PAGE_SIZE
                view = pmm.physmap[base + done:base + want]
                got = 0
                while got < len(view):
                    n = os.preadv(fd, [view[got:]], src + done + got)
                    if n <= 0:
                        view[got:] = bytes(len(view) - got)  # past the end of the file
                        break
                    got += n
            pos += count
    finally:
        if arena >= 0:
            os.close(arena)


def _sendfile_run(arena: int, dst: int, fd: int, src: int, length: int) -> int:
    """``sendfile`` ``length`` bytes of ``fd`` at ``src`` to ``arena`` at ``dst``; returns the
    bytes copied (short at the end of the file, 0 where sendfile cannot write the arena)."""
    done = 0
    os.lseek(arena, dst, os.SEEK_SET)
    while done < length:
        try:
            n = os.sendfile(arena, fd, src + done, length - done)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and done == 0:
                return 0
            raise
        if n <= 0:
            break
        done += n
    return done


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
