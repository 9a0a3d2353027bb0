"""The page source of one VMO of a `SwapSource` (what the core's hierarchy talks to).

The core asks a page source for content it does not have by registering a request and waiting
on it (`vmo.pager.source`). A user pager hands the request to user code; this source serves it
itself, on the thread that waits: it takes the VMO's hierarchy lock and lets the page handler
supply the absent pages from staging, the swap file or zeros. Serving under the hierarchy lock
is what makes a page's journey atomic with respect to everything else that can happen to it --
a DECOMMIT, a ZERO or a shrink cannot slip between reading a staged copy and placing it.

The source is *anonymous* (its VMOs behave as anonymous memory; see
`vmo.cow_pages.CowPages.anonymous_source`) unless it is stacked over another source, where a
page that is removed must come back from below, not as zeros, so DECOMMIT is refused and ZERO
writes zeros as on any pager-backed VMO.

Closing the VMO's handle while at-least-on-write children still see it does not orphan it (a
user pager's VMO would fail their requests): the swap source keeps serving them.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from vmo.errors import Status, ZxError
from vmo.pager.source import PageRequestCommand, Request, RequestTracker

if TYPE_CHECKING:
    from vmo.cow_pages import CowPages
    from vmo.pager.swap.page_handler import PageHandler
    from vmo.pager.swap.region import Region
    from vmo.vm_object import Vmo

MAX_LATENCIES = 1 << 20
#: Pages one step of a merge's swap-in brings back (`SwapVmoSource.on_root_merge`).
MERGE_STEP_PAGES = 1024


class SwapVmoSource(RequestTracker):
    """The `vmo.pager.source.PageSource` of one swap-backed VMO."""

    preserves_content = True
    traps_dirty = False

    def __init__(self, handler: PageHandler, region: Region, *, anonymous: bool) -> None:
        super().__init__()
        self.handler = handler
        self.region = region
        self.anonymous = anonymous
        self.vmo: Vmo | None = None
        self.serve_seconds = 0.0
        #: Seconds each served request took, while a caller collects them (`vmo swap`).
        self.serve_latencies: list[float] | None = None

    @property
    def node(self) -> CowPages:
        return self.region.node

    # ---------------------------------------------------------------- serving

    def wait(self, request: Request, timeout: float | None) -> None:
        with self.lock:
            first = not request.dispatched
            request.dispatched = True
        if first and request.command == PageRequestCommand.READ:
            self._serve(request)
        super().wait(request, timeout)

    def _serve(self, request: Request) -> None:
        node = request.node
        t0 = time.perf_counter()
        with node.hier.lock:
            if request.status is not None:
                return  # cancelled (closed, detached, resized) meanwhile
            if self.detached or self.closed:
                self.cancel_all(node, Status.ERR_BAD_STATE)
                return
            try:
                self.handler.serve_locked(self.region, request.offset,
                                          request.offset + request.length)
            except ZxError as e:
                self.fail(node, request.offset, request.length, e.status)
                return
            except OSError as e:
                self.fail(node, request.offset, request.length, Status.ERR_IO)
                raise ZxError(Status.ERR_IO, f"swap: reading pages back failed: {e}") from e
            # Every page of the request is present now (or was taken by someone else): let
            # the waiters retry, whatever part of it the supplies above covered.
            self._resolve(node, request.offset, request.length, PageRequestCommand.READ,
                          Status.OK, whole=True)
        dt = time.perf_counter() - t0
        self.serve_seconds += dt
        if self.serve_latencies is not None and len(self.serve_latencies) < MAX_LATENCIES:
            self.serve_latencies.append(dt)

    # ---------------------------------------------------------------- the core's callbacks

    def on_pages_removed(self, node: CowPages, start: int, end: int) -> None:
        self.handler.remove_locked(self.region, start, end)

    def on_resize(self, node: CowPages, start: int, end: int) -> None:
        super().on_resize(node, start, end)
        self.handler.remove_locked(self.region, start, end)

    def on_root_merge(self, old_root: CowPages, new_root: CowPages, offset: int, start: int,
                      end: int) -> None:
        """A snapshot's hidden root merges into its remaining child (see
        `vmo.cow_pages.CowPages.acts_anonymous`): follow the content into the child.

        What the child cannot see is dropped. A child at offset 0 (the usual case: the
        snapshot closed and the original VMO remains) keeps the region as it is, its offsets
        are the child's. A child at another offset takes its staged and swapped pages back
        into the arena first (they then move into the child with the merge) rather than
        re-index the staging memfd and the swap file; if they cannot come back (no memory, a
        read error), later accesses to them fail with ``ERR_BAD_STATE``, as after a failed
        `SwapSource.close`."""
        region = self.region
        assert region.node is old_root
        # Waiters on the old root retry and ask the new one.
        self.cancel_all(old_root, Status.OK)
        if region.closed:
            region.node = new_root
            return
        handler = self.handler
        try:
            handler.remove_locked(region, 0, offset + start)
            handler.remove_locked(region, offset + end, max(old_root.size, offset + end))
            if offset:
                while handler.swap_in_locked(region, MERGE_STEP_PAGES):
                    pass
        except (ZxError, OSError):
            self.detached = True
        region.node = new_root
        with contextlib.suppress(OSError):
            region.sync_size_locked()

    def on_handle_closed(self, node: CowPages) -> None:
        # Children still see the node: keep serving them (see the module docstring).
        pass

    def on_close(self, node: CowPages) -> None:
        super().on_close(node)
        self.region.close()
