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

    def on_handle_closed(self, node: CowPages) -> None:
        # Children still see the node: keep serving them (see the module docstring).
        pass

    def on_close(self, node: CowPages) -> None:
        super().on_close(node)
        self.region.close()
