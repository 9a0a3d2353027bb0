"""`SwapSource`: staging memory and a swap file as the page source under VMOs.

Model: crosvm's vmm-swap (``swap/src/page_handler.rs`` and the controller around it), carried
over to the Zircon model of this project. The VMOs a `SwapSource` creates are pager-backed
roots whose page source is the swap source itself (`SwapVmoSource`), so the core's own
machinery does the work crosvm gets from userfaultfd on guest memory:

- A page that is absent from a VMO (never populated, or moved out) makes any access -- a read,
  a write, a fault through a mapping, COMMIT -- raise a page request. The swap source answers
  it from staging, else from the swap file, else with zeros (crosvm's ``handle_page_fault``):
  the VMO behaves as anonymous memory whose pages may live elsewhere.
- `move_to_staging` copies resident pages to the staging memfd and frees their frames, which
  are also punched out of the arena memfd so the host gets the memory back (``st_blocks`` of
  the arena drops). It holds the VMO's hierarchy lock while it moves that VMO (crosvm freezes
  the guest), in batches of 2 MiB: mapped copies are recalled first, and a store that comes
  meanwhile faults and waits, so no store is lost.
- `swap_out` writes staged pages to the swap file; `swap_in` brings everything back eagerly;
  `trim` drops staged pages that are zero or unchanged since they were last swapped out.
- DECOMMIT, ZERO, shrink and close drop the staged and swapped copies of those pages
  (crosvm's ``handle_page_remove``; DECOMMIT and ZERO reach the source through the core's
  anonymous-source hook, `vmo.cow_pages.CowPages.anonymous_source`).

Snapshots. The source is *anonymous*, so its VMOs take snapshots as anonymous VMOs do
(`vmo.cow_pages.CowPages.acts_anonymous`; at-least-on-write clones are snapshots too): the
root becomes the hidden node and keeps this source, whose region stays that node's pages.
Absent content is supplied into the hidden root and forked from there; `move_to_staging` moves
the pages both sides share and leaves those with a split bit (see
`page_handler._resident_runs`). When one side closes and the hidden root merges into the
other, the region follows (`SwapVmoSource.on_root_merge`). Any VMO of the hierarchy names the
region in ``vmos=``.

Stacking: ``SwapSource(k, over=file_pager)`` (a `vmo.pager.FilePager`, or any VMO -- for
instance one of a user `vmo.Pager`). Its VMOs then show the content of the VMO below at the
same offsets (as an at-least-on-write clone would): absent pages that are neither staged nor
swapped are read from below and placed Clean. `move_to_staging` drops Clean pages instead of
staging them (they can be read from below again) and stages Dirty ones as anonymous pages;
`writeback` writes every modified page (resident, staged or swapped) to the VMO below and then
flushes the `FilePager`. A page removed there cannot become zeros by forgetting it, so stacked
VMOs refuse DECOMMIT (``ERR_NOT_SUPPORTED``, as any pager-backed VMO) and ZERO writes zeros.

Locks. Steps (move, swap out/in, trim, status, close) are serialised by the source's step
lock and take each VMO's hierarchy lock in turn; the page requests of a VMO are served under
its hierarchy lock. Nothing takes the step lock while holding a hierarchy lock.

Divergences from crosvm, each for a reason: one staging memfd and one swap file per VMO rather
than one of each with fixed offsets (VMOs resize); resident pages are found from the page list
rather than with ``SEEK_DATA`` over the guest memfd (the arena is shared by every VMO, so its
data ranges are not one VMO's); read-ahead on swap-in uses ``posix_fadvise(WILLNEED)`` rather
than an mlock budget; the copy counters are cumulative rather than reset at each move.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import vmo._args as _args
from vmo.cow_pages import CowPages
from vmo.errors import Status, ZxError
from vmo.pager.swap.file import open_unnamed_file
from vmo.pager.swap.page_handler import PageHandler, io_error
from vmo.pager.swap.region import Region
from vmo.pager.swap.state import (
    StateTracker,
    SwapMetrics,
    SwapState,
    SwapStatus,
)
from vmo.pager.swap.vmo_source import SwapVmoSource
from vmo.pmm import PAGE_SIZE
from vmo.trace import SwapMove
from vmo.types import VmoOptions
from vmo.vm_object import Vmo

if TYPE_CHECKING:
    from vmo.kernel import Kernel
    from vmo.pager.file_pager import FilePager

#: Pages one step moves under one hold of a VMO's lock when the caller sets no bound: faults
#: on the VMO wait at most this long behind a swap-out or swap-in.
STEP_PAGES = (4 << 20) // PAGE_SIZE


class SwapSource:
    """A page source backed by staging memory and a swap file (see the module docstring).

    ``SwapSource(kernel, directory=None, *, over=None)``

    Arguments:
        kernel: the `vmo.Kernel` whose arena holds the resident pages.
        directory: where the swap files are created (unnamed: nothing is left behind); by
            default a new temporary directory, removed by `close`.
        over: a `vmo.pager.FilePager` or a `vmo.Vmo` to stack over (see the module docstring).

    Raises:
        ZxError: ``ERR_WRONG_TYPE`` (``kernel``, ``over``), ``ERR_INVALID_ARGS`` (``directory``
            not a path), ``ERR_NOT_FOUND`` (no such directory), ``ERR_NOT_DIR``-like
            ``ERR_INVALID_ARGS`` (not a directory), ``ERR_ACCESS_DENIED`` (not writable),
            ``ERR_BAD_HANDLE`` (the kernel, or ``over``, is closed).
    """

    def __init__(self, kernel: Kernel, directory: str | os.PathLike[str] | None = None, *,
                 over: FilePager | Vmo | None = None) -> None:
        from vmo.kernel import Kernel
        from vmo.pager.file_pager import FilePager

        if not isinstance(kernel, Kernel):
            raise ZxError(Status.ERR_WRONG_TYPE,
                          f"kernel must be a vmo.Kernel, not {type(kernel).__name__}")
        kernel._check_open()
        self._below: Vmo | None = None
        self._over_pager: FilePager | None = None
        if over is not None:
            if isinstance(over, FilePager):
                over._check_open()
                self._over_pager = over
                self._below = over.vmo
            elif isinstance(over, Vmo):
                over._check_open()
                self._below = over
            else:
                raise ZxError(Status.ERR_WRONG_TYPE,
                              f"over must be a FilePager or a Vmo, not {type(over).__name__}")
            if self._below._kernel is not kernel:
                raise ZxError(Status.ERR_INVALID_ARGS, "over belongs to another kernel")
        self._own_dir = directory is None
        self.directory = self._check_directory(directory)
        self.kernel = kernel
        self.handler = PageHandler()
        if self._below is not None:
            self.handler.read_below = self._read_below
        self._step_lock = threading.Lock()
        self._sources_lock = threading.Lock()
        self._sources: list[SwapVmoSource] = []
        self._state = StateTracker()
        self._trim_cursor: tuple[int, int] = (0, 0)  # (koid of the VMO, page) to resume at
        self._closed = False

    @staticmethod
    def _check_directory(directory: Any) -> str:
        if directory is None:
            return tempfile.mkdtemp(prefix="vmo-swap-")
        path = os.fspath(directory) if isinstance(directory, str | os.PathLike) else None
        if not isinstance(path, str):
            raise ZxError(Status.ERR_INVALID_ARGS,
                          f"directory must be a str or os.PathLike of str, not "
                          f"{type(directory).__name__}")
        if not os.path.exists(path):
            raise ZxError(Status.ERR_NOT_FOUND, f"swap directory {path!r} does not exist")
        if not os.path.isdir(path):
            raise ZxError(Status.ERR_INVALID_ARGS, f"swap directory {path!r} is not a directory")
        try:
            os.close(open_unnamed_file(path))  # the same call a swap file will make
        except OSError as e:
            raise ZxError(Status.ERR_ACCESS_DENIED,
                          f"cannot create swap files in {path!r}: {e}") from e
        return path

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._state.state.value
        return f"<SwapSource {self.directory!r} {len(self._sources)} VMOs {state}>"

    # ---------------------------------------------------------------- plumbing

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ZxError(Status.ERR_BAD_HANDLE, "the swap source is closed")
        if self.kernel.closed:
            raise ZxError(Status.ERR_BAD_HANDLE, "the kernel is closed")

    def _live_sources(self) -> list[SwapVmoSource]:
        with self._sources_lock:
            self._sources = [s for s in self._sources if not s.region.closed]
            return list(self._sources)

    def vmos(self) -> list[Vmo]:
        """The open VMOs this source created, oldest first (their snapshots are not listed,
        though their pages are the source's too)."""
        return [s.vmo for s in self._live_sources() if s.vmo is not None and not s.vmo.closed]

    def _targets(self, vmos: Any) -> list[SwapVmoSource]:
        if vmos is None:
            # Every live region: a VMO whose handle closed may leave its pages to children.
            return self._live_sources()
        if isinstance(vmos, Vmo):
            vmos = [vmos]
        if isinstance(vmos, str | bytes) or not isinstance(vmos, Iterable):
            raise ZxError(Status.ERR_INVALID_ARGS,
                          f"vmos must be None, a Vmo or an iterable of Vmos, not "
                          f"{type(vmos).__name__}")
        out: list[SwapVmoSource] = []
        for v in list(vmos):
            if not isinstance(v, Vmo):
                raise ZxError(Status.ERR_WRONG_TYPE, f"vmos holds a {type(v).__name__}, not a Vmo")
            v._check_open()
            if v._kernel is not self.kernel:
                raise ZxError(Status.ERR_INVALID_ARGS,
                              f"VMO koid {v.koid} belongs to another kernel")
            # Any VMO of a hierarchy whose root this source backs names that root's region:
            # the source's own VMOs, their snapshots, slices and children.
            with v._hier.lock:
                src = v.cow.root_page_source()
            if not isinstance(src, SwapVmoSource) or src not in self._sources:
                raise ZxError(Status.ERR_INVALID_ARGS,
                              f"VMO koid {v.koid} is not a VMO of this swap source")
            if src not in out:
                out.append(src)
        return out

    @staticmethod
    def _max_pages(name: str, value: Any, *, in_bytes: bool) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ZxError(Status.ERR_INVALID_ARGS,
                          f"{name} must be an int or None, not {type(value).__name__}")
        if value < 0:
            raise ZxError(Status.ERR_INVALID_ARGS, f"{name} {value} is negative")
        value = _args.u64(name, value)
        if in_bytes:
            _args.aligned(name, value)
            return value // PAGE_SIZE
        return value

    def _fail_locked(self, reason: str) -> None:
        self._state.enter(SwapState.FAILED, reason)

    def _settle_locked(self) -> None:
        """Name the state after where the pages are (READY, PENDING, ACTIVE); FAILED and a
        swap-in in progress are left only by a swap-in that completes."""
        if self._state.state in (SwapState.FAILED, SwapState.SWAP_IN_IN_PROGRESS):
            return
        staged = swapped = 0
        for s in self._live_sources():
            with s.node.hier.lock:
                staged += s.region.staging_pages
                swapped += s.region.swap_pages
        if staged:
            self._state.enter(SwapState.PENDING)
        elif swapped:
            self._state.enter(SwapState.ACTIVE)
        else:
            self._state.enter(SwapState.READY)

    # ---------------------------------------------------------------- VMOs

    def create_vmo(self, size: int, options: VmoOptions = VmoOptions(0)) -> Vmo:  # noqa: B008
        """A VMO of ``size`` bytes (rounded up to pages) backed by this source: zeros at first
        (or the content below, when stacked). ``options``: ``VmoOptions.RESIZABLE``;
        ``DISCARDABLE`` is ``ERR_NOT_SUPPORTED`` (a discarded page could not be swapped)."""
        self._check_open()
        opts = _args.flags("options", options, VmoOptions)
        size = _args.page_size_round("size", size)
        if opts & VmoOptions.DISCARDABLE:
            raise ZxError(Status.ERR_NOT_SUPPORTED, "a swap-backed VMO cannot be DISCARDABLE")
        kernel = self.kernel
        hier = kernel._new_hierarchy()
        region: Region
        node = CowPages(hier, size // PAGE_SIZE)
        region = Region(node, self.directory, name="")
        src = SwapVmoSource(self.handler, region, anonymous=self._below is None)
        node.page_source = src
        node.supply_zero_offset = node.size  # every absent page is the source's to answer
        hier.root = node
        vmo = Vmo(kernel, node, resizable=bool(opts & VmoOptions.RESIZABLE), discardable=False)
        region.name = str(vmo.koid)
        src.vmo = vmo
        with self._sources_lock:
            self._sources.append(src)
        return vmo

    # ---------------------------------------------------------------- steps

    def move_to_staging(self, vmos: Vmo | Iterable[Vmo] | None = None) -> int:
        """Move the resident pages of ``vmos`` (default: every VMO of the source) to staging
        and free their frames. Returns the pages moved. Raises ``ZxError`` (``ERR_NO_SPACE``,
        ``ERR_IO``) if staging cannot take them; what was not moved stays resident."""
        self._check_open()
        targets = self._targets(vmos)
        with self._step_lock:
            self._check_open()
            t0 = time.perf_counter()
            moved = 0
            try:
                for src in targets:
                    with src.node.hier.lock:
                        if src.region.closed:
                            continue
                        moved += self.handler.move_to_staging_locked(src.region)
            except OSError as e:
                self._fail_locked(f"move_to_staging: {e}")
                raise io_error(e, "move_to_staging") from e
            finally:
                self._state.account(moved, time.perf_counter() - t0)
            self._settle_locked()
            self._trace("stage", moved)
            return moved

    def swap_out(self, max_bytes: int | None = None) -> int:
        """Write staged pages to the swap file: with ``max_bytes``, the next run of at most
        that many bytes of consecutive staged pages (crosvm's ``swap_out``); with None, all of
        them. Returns the pages written, 0 when nothing is staged. Raises ``ZxError``
        (``ERR_NO_SPACE``, ``ERR_IO``) if the file cannot take them: they stay staged and
        readable, and the state is FAILED."""
        self._check_open()
        max_pages = self._max_pages("max_bytes", max_bytes, in_bytes=True)
        if max_pages == 0:
            return 0
        with self._step_lock:
            self._check_open()
            t0 = time.perf_counter()
            progress = [0]
            try:
                self._step_regions(self.handler.swap_out_locked, max_pages, progress)
            except OSError as e:
                self._fail_locked(f"swap_out: {e}")
                raise io_error(e, "swap_out: writing the swap file") from e
            finally:
                self._state.account(progress[0], time.perf_counter() - t0)
            written = progress[0]
            self._settle_locked()
            self._trace("swap_out", written)
            return written

    def swap_in(self, max_bytes: int | None = None) -> int:
        """Bring pages back into the arena eagerly: with ``max_bytes``, the next run of at
        most that many bytes; with None, everything. Returns the pages brought back. Faults
        racing with it are served as usual. When nothing is left out, the state is READY
        (this is also how FAILED is left). Raises ``ZxError`` (``ERR_NO_MEMORY`` if the arena
        cannot hold the pages, ``ERR_IO``) and records FAILED; nothing is lost."""
        self._check_open()
        max_pages = self._max_pages("max_bytes", max_bytes, in_bytes=True)
        if max_pages == 0:
            return 0
        with self._step_lock:
            self._check_open()
            done = self._swap_in_locked(max_pages)
            self._trace("swap_in", done)
            return done

    def _step_regions(self, step: Callable[[Region, int], int], max_pages: int | None,
                      progress: list[int]) -> None:
        """Run ``step`` (swap out or in) over every live region, each call under that
        hierarchy's lock: with ``max_pages``, one run of at most that many pages, else
        `STEP_PAGES` at a time until nothing is left. ``progress[0]`` counts the pages as
        they go, so that a step failing part-way still has what was done accounted."""
        for src in self._live_sources():
            while True:
                with src.node.hier.lock:
                    if src.region.closed:
                        break
                    n = step(src.region, STEP_PAGES if max_pages is None else max_pages)
                progress[0] += n
                if n == 0 or max_pages is not None:
                    break
            if progress[0] and max_pages is not None:
                break

    def _swap_in_locked(self, max_pages: int | None) -> int:
        t0 = time.perf_counter()
        if self._state.state != SwapState.FAILED:
            self._state.enter(SwapState.SWAP_IN_IN_PROGRESS)
        progress = [0]
        try:
            self._step_regions(self.handler.swap_in_locked, max_pages, progress)
        except ZxError as e:
            self._fail_locked(f"swap_in: {e}")
            raise
        except OSError as e:
            self._fail_locked(f"swap_in: {e}")
            raise io_error(e, "swap_in: reading the swap file") from e
        finally:
            self._state.account(progress[0], time.perf_counter() - t0)
        done = progress[0]
        if not any(s.region.staging_pages or s.region.swap_pages for s in self._live_sources()):
            self._state.enter(SwapState.READY)
        return done

    def trim(self, max_pages: int | None = None) -> int:
        """Drop staged pages that are all zeros, and staged pages equal to the copy the swap
        file still holds (crosvm's ``trim_pages``). With ``max_pages``, examine at most that
        many staged pages, resuming where the previous call stopped (and starting over after
        the last VMO); with None, examine all. Returns the pages dropped."""
        self._check_open()
        limit = self._max_pages("max_pages", max_pages, in_bytes=False)
        with self._step_lock:
            self._check_open()
            t0 = time.perf_counter()
            sources = sorted(self._live_sources(), key=lambda s: s.vmo.koid if s.vmo else 0)
            koid, page = self._trim_cursor if limit is not None else (0, 0)
            budget = limit
            trimmed = 0
            cursor = (0, 0)
            for src in sources:
                skoid = src.vmo.koid if src.vmo is not None else 0
                if skoid < koid:
                    continue
                start = page if skoid == koid else 0
                with src.node.hier.lock:
                    if src.region.closed:
                        continue
                    n, examined, nxt = self.handler.trim_locked(
                        src.region, start, budget if budget is not None else 1 << 62)
                trimmed += n
                if budget is not None:
                    budget -= examined
                    if budget <= 0 and nxt < src.node.size:
                        cursor = (skoid, nxt)
                        break
            self._trim_cursor = cursor
            self._state.account(trimmed, time.perf_counter() - t0)
            self._settle_locked()
            self._trace("trim", trimmed)
            return trimmed

    def _trace(self, move: str, pages: int) -> None:
        """One ``swap`` event (`vmo.trace.SwapMove`) per call that moved pages."""
        if pages and (tracer := self.kernel.state.tracer) is not None:
            tracer.emit(SwapMove, move=move, pages=pages)

    # ---------------------------------------------------------------- stacking

    def _read_below(self, region: Region, start: int, frames: list[int]) -> None:
        """Fill ``frames`` with pages ``[start, start + len(frames))`` of the VMO below (zeros
        past its end). Called under the swap VMO's hierarchy lock; takes the lock of the VMO
        below (never the reverse order)."""
        below = self._below
        assert below is not None
        pmm = self.kernel.pmm
        length = len(frames) * PAGE_SIZE
        offset = start * PAGE_SIZE
        size = below.get_size()
        have = max(0, min(length, size - offset))
        data = below.read(have, offset) if have else b""
        view = memoryview(data)
        physmap = pmm.physmap
        for i, f in enumerate(frames):
            chunk = view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
            base = f * PAGE_SIZE
            physmap[base:base + len(chunk)] = chunk
            if len(chunk) < PAGE_SIZE:
                physmap[base + len(chunk):base + PAGE_SIZE] = bytes(PAGE_SIZE - len(chunk))

    def writeback(self) -> int:
        """Stacked only: write every modified page -- resident Dirty pages, staged and swapped
        pages -- to the VMO below (resident ones become Clean; staged and swapped copies are
        dropped, the next access reads them from below), then flush the `FilePager` below.
        Returns the pages written. ``ERR_BAD_STATE`` if the source is not stacked."""
        self._check_open()
        below = self._below
        if below is None:
            raise ZxError(Status.ERR_BAD_STATE, "writeback needs a source stacked over another")
        with self._step_lock:
            self._check_open()
            written = 0
            for src in self._live_sources():
                with src.node.hier.lock:
                    if src.region.closed:
                        continue
                    written += self._writeback_locked(src.region, below)
            if self._over_pager is not None:
                self._over_pager.flush()
            self._settle_locked()
            return written

    @staticmethod
    def _writeback_locked(region: Region, below: Vmo) -> int:
        node = region.node
        limit = below.get_size() // PAGE_SIZE
        written = 0

        def put(start: int, data: bytes) -> None:
            end = min(limit, start + len(data) // PAGE_SIZE)
            if end > start:
                below.write(memoryview(data)[:(end - start) * PAGE_SIZE], start * PAGE_SIZE)

        for off, length, is_zero in node.dirty_ranges_locked(0, node.size):
            if is_zero:
                continue
            node.writeback_begin_locked(off, off + length)
            put(off, node.read_locked(off * PAGE_SIZE, length * PAGE_SIZE))
            node.writeback_end_locked(off, off + length)
            written += length
        if region.staging is not None:
            for s, e in list(region.staging.present.runs()):
                put(s, region.staging.read(s, e))
                region.staging.clear_range(s, e)
                written += e - s
        if region.file is not None:
            for s, e in list(region.file.present.runs()):
                put(s, region.file.read(s, e))
                region.file.erase_from_disk(s, e)
                written += e - s
        return written

    # ---------------------------------------------------------------- status

    def status(self) -> SwapStatus:
        """The state, the metrics and the transitions (`SwapStatus`; ``.to_json()``)."""
        self._check_open()
        with self._step_lock:
            self._check_open()
            self._settle_locked()
            resident = staged = swapped = staging_bytes = file_bytes = 0
            for s in self._live_sources():
                with s.node.hier.lock:
                    region = s.region
                    if region.closed:
                        continue
                    resident += region.node.page_list.count_pages()
                    staged += region.staging_pages
                    swapped += region.swap_pages
                    if region.staging is not None:
                        staging_bytes += region.staging.allocated_bytes()
                    if region.file is not None:
                        file_bytes += region.file.allocated_bytes()
            metrics = SwapMetrics(resident_pages=resident, staging_pages=staged,
                                  swap_pages=swapped, staging_bytes=staging_bytes,
                                  swap_file_bytes=file_bytes, **self.handler.snapshot())
            return SwapStatus(self._state.state, metrics, tuple(self._state.transitions),
                              self._state.error)

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Bring every page back into the arena and release the staging memory, the swap files
        and the directory (if the source made it). The VMOs stay usable as anonymous memory;
        a VMO whose pages cannot come back (the arena is full, the file unreadable) fails its
        later accesses to them with ``ERR_BAD_STATE``. Closing twice does nothing."""
        if self._closed:
            return
        with self._step_lock:
            if self._closed:
                return
            self._closed = True
            kernel_open = not self.kernel.closed
            for src in self._live_sources():
                with src.node.hier.lock:
                    region = src.region
                    if kernel_open and not region.closed:
                        try:
                            while self.handler.swap_in_locked(region, STEP_PAGES):
                                pass
                        except (ZxError, OSError):
                            # What cannot come back is lost with the files: say so to every
                            # access that needs it rather than show zeros.
                            src.detached = True
                            src.cancel_all(region.node, Status.ERR_BAD_STATE)
                    region.close()
            with self._sources_lock:
                self._sources = []
            self.handler.truncator.close()
            if self._own_dir:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SwapSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A source dropped without close: its files are unnamed (the fds close with the
        # regions' owners); only a directory we made would be left behind.
        if getattr(self, "_own_dir", False) and not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                shutil.rmtree(self.directory, ignore_errors=True)
