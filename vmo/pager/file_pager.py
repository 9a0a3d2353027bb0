"""`FilePager`: a file served as a pager-backed VMO, written back on `FilePager.flush`.

This is the wendelin ``BigFile`` pattern (``loadblk`` / ``storeblk`` / ``fileh_dirty_writeout``)
built on the user pager. The file is cut into page-sized blocks; block ``n`` is VMO page ``n``:

- *loadblk*: a READ request for ``[offset, offset + length)`` is served by reading the file
  straight into fresh pages and supplying them (`Pager.supply_pages_from_fd`: one ``preadv``
  into the frames, no intermediate buffer and no aux VMO). The whole requested run is served
  at once (a read of 1 MiB makes one request, one ``preadv`` of 1 MiB and one supply), in
  chunks of at most ``chunk_size`` bytes. Bytes past the end of the file (or past ``size``)
  read as zeros; a hole of the file (``SEEK_DATA``) is supplied as zero pages without reading
  it or using memory, through an empty auxiliary VMO and `Pager.supply_pages`.
- *readahead*: like the OS's page cache, a reader going through the file in order gets the
  pages ahead of it before it asks. With ``readahead="auto"`` (the default) a READ request
  that starts where the previous one's supply ended (or at offset 0) is sequential: it is
  served with a window of extra pages that doubles on each sequential request, from the
  request's own size up to ``max_readahead``; any other request gets no readahead and
  resets the window. An int is a fixed number of bytes supplied past every request (0: off).
- *dirty*: with ``trap_dirty`` the VMO asks before a Clean page is first written (a DIRTY
  request); the pager acknowledges it (``PagerOp.DIRTY``). Without it pages simply turn Dirty.
- *writeout*: `flush` asks the kernel which ranges are not Clean (`Pager.query_dirty_ranges`)
  and, range after range, marks it ``WRITEBACK_BEGIN`` (a zero range with
  ``WRITEBACK_BEGIN_ZERO_RANGE``), copies its bytes out with `Vmo.read` and ``os.pwrite``\\s
  them to the file (a zero range: ``pwrite`` of zeros inside the file, ``ftruncate`` past its
  end), and ends it with ``WRITEBACK_END``; optionally ``fsync``\\s at the end. A write that
  lands between BEGIN and END re-dirties its page, which END then leaves Dirty: the next flush
  writes it again, so no store is ever lost. Clean pages are what the kernel may evict
  (`Kernel.reclaim`); the next access reads them from the file again.

The logical size. ``size`` (default: the file's size when opened) is the size in bytes that the
file mirrors; the VMO is that size rounded up to whole pages. Like a ``mmap`` of a file, the tail
of the last page past ``size`` reads zeros and is never written to the file. A ``size`` larger
than the file serves zeros past the file's end; writing back pages there extends the file (up
to ``size``). `FilePager.resize` (a ``resizable`` pager) changes both the VMO and the logical
size; a shrink truncates the file at once, a growth reaches the file on the next `flush`
(the new pages are a zero range, written back by extending the file).

Two ways to serve requests, as `vmo.Pager` offers:

- ``mode="handler"`` (default): requests are served on the thread that needs the page.
- ``mode="queue"``: requests queue on the pager's port. Call `serve_in_thread` to serve them from
  a thread of this object, or `serve_one` from your own loop.

Errors. Arguments are checked like the core's (`ZxError`, ``ERR_INVALID_ARGS`` /
``ERR_OUT_OF_RANGE`` / ``ERR_WRONG_TYPE``); opening the file maps ``OSError`` to ``ERR_NOT_FOUND``,
``ERR_ACCESS_DENIED`` or ``ERR_IO``. A failed ``pread`` fails the page request with ``ERR_IO`` (the
reader's call raises ``ZxError(ERR_IO)``); a failed ``pwrite`` in `flush` raises ``ZxError(ERR_IO)``
and leaves the ranges un-Clean (no WRITEBACK_END is sent), so a later flush retries them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs

import vmo._args as _args
from vmo.errors import Status, ZxError
from vmo.pager.source import PageRequestCommand
from vmo.pager.user_pager import (
    WRITEBACK_BEGIN_ZERO_RANGE,
    DirtyRangeOptions,
    Pager,
    PageRequest,
    PagerOp,
    PagerVmoOptions,
)
from vmo.pmm import PAGE_SIZE
from vmo.types import VmoOp
from vmo.vm_object import Vmo

if TYPE_CHECKING:
    from vmo.kernel import Kernel

DEFAULT_CHUNK = 4 << 20
DEFAULT_MAX_READAHEAD = 4 << 20
_MODES = ("handler", "queue")


@attrs.define(frozen=True)
class FilePagerMetrics:
    """What a `FilePager` did, since it was opened. Pages are ``PAGE_SIZE`` blocks."""

    read_requests: int  # READ requests served (supplied, fully or partly)
    dirty_requests: int  # DIRTY requests acknowledged (trap_dirty)
    complete_requests: int  # COMPLETE packets seen (detach or close)
    failed_requests: int  # requests failed back to the reader (a pread error)
    pages_read: int  # pages supplied with bytes read from the file
    pages_zero_filled: int  # pages supplied as zeros (past the end of the file, or all-zero)
    pages_readahead: int  # pages supplied beyond what a request asked for (readahead)
    pages_dirtied: int  # pages acknowledged Dirty
    pages_written_back: int  # pages written to the file by `flush` (data ranges)
    zero_pages_written_back: int  # pages of zero ranges written back (zeros or file growth)
    bytes_read: int  # bytes ``os.pread`` returned
    bytes_written: int  # bytes ``os.pwrite`` wrote (zeros of zero ranges included)
    flushes: int  # `flush` calls that completed
    handler_errors: int  # exceptions raised while serving a request
    serve_seconds: float  # time spent serving READ requests (pread + supply)
    flush_seconds: float  # time spent in `flush`


_COUNTERS = [f.name for f in attrs.fields(FilePagerMetrics)]


class FilePager:
    """A file served as a pager-backed VMO (see the module docstring).

    ``FilePager(kernel, path, *, size=None, trap_dirty=False, mode="handler", resizable=False,
    create=False, readahead="auto", max_readahead=4 MiB, chunk_size=4 MiB, name=None)``

    Arguments:
        kernel: the `vmo.Kernel` whose memory holds the pages.
        path: the file (``str`` or ``os.PathLike``); opened read-write.
        size: the logical size in bytes (default: the file's size); the VMO is rounded up to
            pages. A size of 0 is allowed (an empty VMO; useful with ``resizable``).
        trap_dirty: create the VMO with ``PagerVmoOptions.TRAP_DIRTY``; DIRTY requests are
            acknowledged (and counted).
        mode: ``"handler"`` (served on the needing thread) or ``"queue"`` (served by
            `serve_in_thread` or `serve_one`).
        resizable: create the VMO with ``PagerVmoOptions.RESIZABLE`` (see `resize`).
        create: create the file if it does not exist (with ``size``: it starts empty and
            grows as pages are written back).
        readahead: ``"auto"`` (default): a window that grows while requests are sequential
            (see the module docstring); or bytes (rounded up to pages) to supply past the end
            of every READ request; 0 turns readahead off.
        max_readahead: the largest ``"auto"`` window in bytes (rounded up to pages).
        chunk_size: the largest single ``pread``/``pwrite`` (rounded up to pages); a write
            back of one chunk is also the longest the VMO's lock is held for it.
        name: the VMO's name (default: the file's base name, truncated).

    Raises:
        ZxError: ``ERR_WRONG_TYPE`` if ``kernel`` is not a `Kernel`; ``ERR_INVALID_ARGS`` for a
            bad ``path``, ``mode``, flag or number; ``ERR_OUT_OF_RANGE`` for a size that cannot be
            a VMO; ``ERR_NOT_FOUND`` / ``ERR_ACCESS_DENIED`` / ``ERR_IO`` if the file cannot be
            opened; ``ERR_BAD_HANDLE`` if the kernel is closed.

    The object owns the file descriptor, the pager and the VMO: `close` (or leaving a ``with``
    block) flushes, detaches the VMO, and closes all three. Thread-safe: requests may be
    served on several threads at once, and `flush` may run while other threads write.
    """

    def __init__(self, kernel: Kernel, path: str | os.PathLike[str], *, size: int | None = None,
                 trap_dirty: bool = False, mode: Literal["handler", "queue"] = "handler",
                 resizable: bool = False, create: bool = False,
                 readahead: int | Literal["auto"] = "auto",
                 max_readahead: int = DEFAULT_MAX_READAHEAD, chunk_size: int = DEFAULT_CHUNK,
                 name: str | None = None) -> None:
        from vmo.kernel import Kernel

        if not isinstance(kernel, Kernel):
            raise ZxError(Status.ERR_WRONG_TYPE,
                          f"kernel must be a vmo.Kernel, not {type(kernel).__name__}")
        kernel._check_open()
        fspath = os.fspath(path) if isinstance(path, str | os.PathLike) else None
        if not isinstance(fspath, str):
            raise ZxError(Status.ERR_INVALID_ARGS,
                          f"path must be a str or os.PathLike of str, not {type(path).__name__}")
        for flag_name, flag in (("trap_dirty", trap_dirty), ("resizable", resizable),
                                ("create", create)):
            if not isinstance(flag, bool):
                raise ZxError(Status.ERR_INVALID_ARGS, f"{flag_name} must be a bool")
        if mode not in _MODES:
            raise ZxError(Status.ERR_INVALID_ARGS, f"mode must be one of {_MODES}, not {mode!r}")
        if size is not None:
            size = _args.u64("size", size)
            _args.page_size_round("size", size)
        auto = isinstance(readahead, str) and readahead == "auto"
        readahead = 0 if auto else _args.page_size_round("readahead", readahead)
        max_readahead = _args.page_size_round("max_readahead", max_readahead)
        chunk_size = _args.page_size_round("chunk_size", chunk_size)
        if chunk_size == 0 or chunk_size > 1 << 30:
            raise ZxError(Status.ERR_INVALID_ARGS,
                          f"chunk_size {chunk_size:#x} must be between one page and 1 GiB")
        if name is not None and not isinstance(name, str):
            raise ZxError(Status.ERR_INVALID_ARGS, "name must be a str or None")

        self.path = fspath
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except (OSError, ValueError) as e:
            raise _zx_from_os(e, f"cannot open {self.path!r}") from e
        try:
            if size is None:
                size = os.fstat(self._fd).st_size
            self._setup(kernel, size, trap_dirty, mode, resizable,
                        "auto" if auto else readahead, max_readahead, chunk_size, name)
        except BaseException:
            os.close(self._fd)
            raise

    def _setup(self, kernel: Kernel, size: int, trap_dirty: bool, mode: str, resizable: bool,
               readahead: int | str, max_readahead: int, chunk_size: int,
               name: str | None) -> None:
        self.kernel = kernel
        self.mode = mode
        self.trap_dirty = trap_dirty
        self.readahead = readahead
        self.max_readahead = max_readahead
        # The "auto" readahead state: where the last READ's supply ended, and its window.
        # Requests served at once on several threads may race on these; the worst outcome is
        # a window of the wrong size, never wrong content.
        self._ra_end = 0
        self._ra_window = 0
        self.chunk_size = chunk_size
        self._size = size  # the logical size in bytes (see the module docstring)
        self._counters: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        self._counters_lock = threading.Lock()
        # Serialises flush and resize: both read the logical size and the dirty ranges.
        self._flush_lock = threading.RLock()
        # One aux VMO per serving thread: requests may be served on several threads at once
        # (handler mode), and an aux VMO must not be filled by two of them.
        self._local = threading.local()
        self._aux: list[Vmo] = []
        self._aux_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._close_lock = threading.RLock()
        # The pager's handler holds this object weakly: a dropped FilePager can be collected
        # (and closed by its finalizer) although the kernel keeps the pager alive.
        handler = _weak_handler(self) if mode == "handler" else None
        self.pager: Pager = kernel.pager_create(handler)
        options = PagerVmoOptions(0)
        if trap_dirty:
            options |= PagerVmoOptions.TRAP_DIRTY
        if resizable:
            options |= PagerVmoOptions.RESIZABLE
        try:
            self.vmo: Vmo = self.pager.create_vmo(size, options)
        except BaseException:
            self.pager.close()
            raise
        self.vmo.name = os.path.basename(self.path) if name is None else name
        kernel._own_file_pager(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._size} bytes"
        return f"<FilePager {self.path!r} {self.mode} mode, {state}>"

    # ---------------------------------------------------------------- plumbing

    @property
    def size(self) -> int:
        """The logical size in bytes that the file mirrors."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    def _check_open(self) -> None:
        if self._closed:
            raise ZxError(Status.ERR_BAD_HANDLE, f"FilePager for {self.path!r} is closed")

    def _count(self, **deltas: float) -> None:
        with self._counters_lock:
            for key, delta in deltas.items():
                self._counters[key] += delta

    def metrics(self) -> FilePagerMetrics:
        """A snapshot of the counters (`FilePagerMetrics`)."""
        with self._counters_lock:
            return FilePagerMetrics(**self._counters)  # type: ignore[arg-type]

    def _scratch(self) -> Vmo:
        """This thread's aux VMO, one chunk large.

        It holds no memory between requests: the file is read straight into its pages
        (`Vmo.write_from_fd`) and supply_pages moves them out.
        """
        local = self._local
        aux: Vmo | None = getattr(local, "aux", None)
        if aux is None or aux.closed:
            aux = self.kernel.vmo_create(self.chunk_size)
            aux.name = "file-pager-aux"
            local.aux = aux
            with self._aux_lock:
                self._aux.append(aux)
        return aux

    # ---------------------------------------------------------------- serving (loadblk)

    def handle(self, request: PageRequest) -> None:
        """Serve one page request (the pager's handler in handler mode).

        READ: read the requested blocks from the file and supply them (plus ``readahead``).
        DIRTY: acknowledge. COMPLETE: count. A request that can no longer be served (the VMO
        was detached, closed or shrank meanwhile) is dropped: its waiters were already woken.
        """
        if request.command == PageRequestCommand.COMPLETE:
            self._count(complete_requests=1)
            return
        try:
            if request.command == PageRequestCommand.READ:
                self._serve_read(request)
            else:
                self._serve_dirty(request)
        except ZxError as e:
            if e.status in (Status.ERR_BAD_STATE, Status.ERR_BAD_HANDLE,
                            Status.ERR_OUT_OF_RANGE):
                return  # detached, closed or resized under us: nobody waits for this any more
            self._fail(request, e)
            raise
        except Exception as e:
            self._fail(request, e)
            raise

    def _fail(self, request: PageRequest, error: BaseException) -> None:
        """Serving failed: fail the request back to its readers (ERR_IO) rather than leave
        them waiting, whatever the mode."""
        self._count(handler_errors=1, failed_requests=1)
        # If the VMO or pager went away meanwhile, its waiters were woken already.
        with contextlib.suppress(ZxError):
            self.pager.op_range(PagerOp.FAIL, request.vmo, request.offset, request.length,
                                Status.ERR_IO)

    def _readahead_end(self, start: int, end: int, vmo_size: int) -> int:
        """Where the supply for a READ request of ``[start, end)`` ends, readahead included."""
        if self.readahead == "auto":
            if start in (0, self._ra_end):  # sequential: grow the window
                window = min(self.max_readahead, max(2 * self._ra_window, end - start))
            else:
                window = 0
            self._ra_window = window
        else:
            window = int(self.readahead)
        served_end = max(end, min(end + window, vmo_size))
        self._ra_end = served_end
        return served_end

    def _serve_read(self, request: PageRequest) -> None:
        t0 = time.perf_counter()
        vmo = request.vmo
        start, end = request.offset, request.offset + request.length
        # Clip to the VMO as it is now; a shrink racing with us makes the supply fail with
        # ERR_OUT_OF_RANGE, which `handle` drops.
        served_end = self._readahead_end(start, end, vmo.get_size())
        fd = self._fd
        logical = self._size
        # Pages wholly past this are zeros whichever way they are supplied.
        data_end = min(logical, _page_round_up(os.fstat(fd).st_size))
        pages_read = zero_pages = 0
        nbytes = 0
        off = start
        while off < served_end:
            n = min(self.chunk_size, served_end - off)
            want = max(0, min(n, logical - off))
            if want and not _has_data(fd, off, off + want):
                want = 0  # a hole in the file: supplied as zero markers, read from nowhere
                zero_pages += n // PAGE_SIZE
            else:
                zero_pages += max(0, off + n - max(off, data_end)) // PAGE_SIZE
            if want == n:
                # The usual case: file bytes all the way. Straight from the file into pages
                # (pages already present are skipped, not read).
                got = self.pager.supply_pages_from_fd(vmo, off, n, fd, off)
            else:
                got = self._supply_partial(vmo, off, n, want)
            nbytes += got
            pages_read += -(-got // PAGE_SIZE)
            off += n
        self._count(read_requests=1, pages_read=pages_read, pages_zero_filled=zero_pages,
                    pages_readahead=(served_end - end) // PAGE_SIZE, bytes_read=nbytes,
                    serve_seconds=time.perf_counter() - t0)

    def _supply_partial(self, vmo: Vmo, off: int, n: int, want: int) -> int:
        """Supply ``n`` bytes at ``off`` of which only the first ``want`` come from the file
        (the logical end or a hole lies inside): through this thread's aux VMO, whose pages
        past ``want`` stay empty and are supplied as zero markers. Returns the bytes read."""
        aux = self._scratch()
        got = 0
        try:
            if want:
                # The rest of the last page (past the logical size) is zero, as the aux
                # VMO's fresh pages are.
                got = aux.write_from_fd(self._fd, want, 0, off)
            self.pager.supply_pages(vmo, off, n, aux, 0)
        except BaseException:
            # The supply did not take the pages: empty the aux VMO, or a later, shorter
            # read would supply this one's tail.
            if not aux.closed and not self.kernel.closed:
                aux.op_range(VmoOp.DECOMMIT, 0, aux.get_size())
            raise
        return got

    def _serve_dirty(self, request: PageRequest) -> None:
        self.pager.op_range(PagerOp.DIRTY, request.vmo, request.offset, request.length)
        self._count(dirty_requests=1, pages_dirtied=request.length // PAGE_SIZE)

    def serve_one(self, timeout: float | None = None) -> PageRequest:
        """Queue mode: take one request from the pager's port and serve it; returns it.

        Raises ``ZxError(ERR_TIMED_OUT)`` if none arrives within ``timeout`` seconds,
        ``ERR_BAD_STATE`` in handler mode, ``ERR_BAD_HANDLE`` once closed.
        """
        self._check_open()
        if self.mode != "queue":
            raise ZxError(Status.ERR_BAD_STATE, "serve_one is for a FilePager in queue mode")
        request = self.pager.get_request(timeout)
        self.handle(request)
        return request

    def serve_in_thread(self) -> threading.Thread:
        """Queue mode: serve requests from a daemon thread until `close`. Returns the thread;
        calling it again returns the same thread."""
        self._check_open()
        if self.mode != "queue":
            raise ZxError(Status.ERR_BAD_STATE, "serve_in_thread is for a FilePager in queue mode")
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve_loop, daemon=True,
                                            name=f"vmo-file-pager-{os.path.basename(self.path)}")
            self._thread.start()
        return self._thread

    def _serve_loop(self) -> None:
        pager = self.pager
        while True:
            try:
                request = pager.get_request()
            except ZxError:
                return  # the pager was closed
            # A failure is counted and failed back to the reader by handle(): keep serving.
            with contextlib.suppress(Exception):
                self.handle(request)

    # ---------------------------------------------------------------- writeout (storeblk)

    def flush(self, *, sync: bool = False) -> int:
        """Write every range that is not Clean back to the file; returns the pages written.

        The ranges are written back one after the other, in order: WRITEBACK_BEGIN, read the
        bytes from the VMO, ``pwrite`` them (clipped to the logical size), WRITEBACK_END. In
        order and one at a time because the kernel tracks one AwaitingClean zero range only,
        the one at the supply-zero offset: a zero range further on becomes writable back only
        once the ranges before it are Clean. With ``sync`` the file is synced (``fsync``) before
        flush returns. A flush with nothing dirty writes nothing: flushing twice is the same
        as once.

        Raises ``ZxError(ERR_IO)`` (``ERR_NO_SPACE`` for a full disk) if the file cannot be
        written: the range being written gets no WRITEBACK_END, so it stays un-Clean (Dirty
        or AwaitingClean) with every range after it, and the next flush writes them again.
        ``ERR_BAD_HANDLE`` once closed.
        """
        if not isinstance(sync, bool):
            raise ZxError(Status.ERR_INVALID_ARGS, "sync must be a bool")
        self._check_open()
        with self._flush_lock:
            t0 = time.perf_counter()
            pager, vmo = self.pager, self.vmo
            vsize = vmo.get_size()
            if -(-self._size // PAGE_SIZE) * PAGE_SIZE != vsize:
                # The VMO was resized behind our back (vmo.set_size): follow it.
                self._size = vsize if vsize > self._size else min(self._size, vsize)
            logical = self._size
            pages = zero_pages = nbytes = 0
            try:
                for r in pager.query_dirty_ranges(vmo, 0, vsize):
                    is_zero = bool(r.options & DirtyRangeOptions.IS_ZERO)
                    pager.op_range(PagerOp.WRITEBACK_BEGIN, vmo, r.offset, r.length,
                                   WRITEBACK_BEGIN_ZERO_RANGE if is_zero else 0)
                    end = min(r.offset + r.length, logical)
                    if is_zero:
                        nbytes += self._write_zeros(r.offset, end)
                        zero_pages += r.length // PAGE_SIZE
                    else:
                        nbytes += self._write_data(r.offset, end)
                        pages += r.length // PAGE_SIZE
                    # Clean once in the file's page cache: an evicted page is read back from
                    # there, so it is correct before it is durable (``sync`` below).
                    pager.op_range(PagerOp.WRITEBACK_END, vmo, r.offset, r.length)
                if sync and pages + zero_pages:
                    os.fsync(self._fd)
            except OSError as e:
                raise _zx_from_os(e, f"writing back to {self.path!r}", Status.ERR_IO) from e
            finally:
                self._count(pages_written_back=pages, zero_pages_written_back=zero_pages,
                            bytes_written=nbytes, flush_seconds=time.perf_counter() - t0)
            self._count(flushes=1)
            return pages + zero_pages

    def _write_data(self, start: int, end: int) -> int:
        """``pwritev`` straight from the VMO's pages (`Vmo.read_to_fd`), a chunk at a time."""
        written = 0
        off = start
        while off < end:
            n = min(self.chunk_size, end - off)
            written += self.vmo.read_to_fd(self._fd, n, off, off)
            off += n
        return written

    def _write_zeros(self, start: int, end: int) -> int:
        """A zero range: zeros where the file has bytes, growth (a hole) past its end."""
        if start >= end:
            return 0
        file_size = os.fstat(self._fd).st_size
        written = 0
        off = start
        inside = min(end, file_size)
        zeros = bytes(min(self.chunk_size, max(0, inside - start)))
        while off < inside:
            n = min(len(zeros), inside - off)
            written += _pwrite_all(self._fd, memoryview(zeros)[:n], off)
            off += n
        if end > file_size:
            os.ftruncate(self._fd, end)
        return written

    # ---------------------------------------------------------------- size

    def resize(self, size: int) -> None:
        """Change the logical size (and the VMO's, which must be ``resizable``).

        A shrink truncates the file at once (what the VMO no longer holds is gone); a growth
        adds a zero range to the VMO that the next `flush` writes back by extending the file.
        Raises ``ZxError(ERR_UNAVAILABLE)`` if the VMO is not resizable.
        """
        self._check_open()
        size = _args.u64("size", size)
        _args.page_size_round("size", size)
        with self._flush_lock:
            self.vmo.set_size(size)
            old = self._size
            self._size = size
            if size < old:
                try:
                    if os.fstat(self._fd).st_size > size:
                        os.ftruncate(self._fd, size)
                except OSError as e:
                    raise _zx_from_os(e, f"truncating {self.path!r}", Status.ERR_IO) from e

    # ---------------------------------------------------------------- lifetime

    def close(self, *, flush: bool = True) -> None:
        """Flush (unless ``flush=False``), detach and close the VMO, close the pager, stop the
        serving thread and close the file. Idempotent: a second close does nothing. The
        kernel's close closes every `FilePager` of the kernel (flushing it) first; one that
        is dropped without `close` is closed by its finalizer, with a ``ResourceWarning``."""
        with self._close_lock:
            if self._closed:
                return
            try:
                if flush and not self.kernel.closed and not self.vmo.closed:
                    self.flush()
            finally:
                self._closed = True
                self._teardown()

    def __del__(self) -> None:
        # Like an unclosed file: warn, then close. Not here -- a collection can run on any
        # thread, in the middle of anything, even under a hierarchy lock -- but on the
        # closer thread.
        if getattr(self, "_closed", True):
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        _closer.close_later(self)

    def _teardown(self) -> None:
        kernel_open = not self.kernel.closed
        if kernel_open and not self.vmo.closed:
            # Detach first: waiters (and children of the VMO) fail with ERR_BAD_STATE instead
            # of waiting for a pager that is going away.
            with contextlib.suppress(ZxError):
                self.pager.detach_vmo(self.vmo)
        with contextlib.suppress(ZxError):
            self.pager.close()
        if not self.vmo.closed:
            with contextlib.suppress(ZxError):
                self.vmo.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._aux_lock:
            aux, self._aux = self._aux, []
        for v in aux:
            if not v.closed:
                with contextlib.suppress(ZxError):
                    v.close()
        os.close(self._fd)

    def __enter__(self) -> FilePager:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self.close()


def _weak_handler(fp: FilePager) -> Callable[[PageRequest], None]:
    ref = weakref.ref(fp)

    def handle(request: PageRequest) -> None:
        target = ref()
        if target is None:
            raise ZxError(Status.ERR_BAD_STATE, "the FilePager was dropped")
        target.handle(request)

    return handle


class _Closer:
    """Closes dropped `FilePager`s on a thread of its own (see `FilePager.__del__`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[FilePager] = []
        self._thread: threading.Thread | None = None

    def close_later(self, fp: FilePager) -> None:
        with self._cond:
            self._queue.append(fp)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="vmo-filepager-closer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                fp = self._queue[0]
            with contextlib.suppress(Exception):
                fp.close()
            with self._cond:
                self._queue.pop(0)
            del fp

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every dropped FilePager handed over so far is closed (for tests)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if not self._queue:
                    break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


_closer = _Closer()


def _page_round_up(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


def _has_data(fd: int, start: int, end: int) -> bool:
    """Does the file hold data (not a hole) anywhere in ``[start, end)``? ``SEEK_DATA`` asks the
    filesystem, without reading; where it cannot tell, assume data."""
    try:
        return os.lseek(fd, start, os.SEEK_DATA) < end
    except OSError as e:
        return e.errno != errno.ENXIO  # ENXIO: no data past start


def _pwrite_all(fd: int, data: Any, offset: int) -> int:
    view = memoryview(data)
    total = len(view)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[n:]
        offset += n
    return total


def _zx_from_os(e: BaseException, what: str, default: Status = Status.ERR_IO) -> ZxError:
    if isinstance(e, FileNotFoundError | NotADirectoryError):
        status = Status.ERR_NOT_FOUND
    elif isinstance(e, PermissionError):
        status = Status.ERR_ACCESS_DENIED
    elif isinstance(e, IsADirectoryError | ValueError):
        status = Status.ERR_INVALID_ARGS
    elif isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        status = Status.ERR_NO_SPACE
    else:
        status = default
    return ZxError(status, f"{what}: {e}")


__all__ = ["FilePager", "FilePagerMetrics"]
