"""Page sources and page requests: how a VMO waits for content it does not have.

A *page source* backs the root of a hierarchy. When a lookup finds no page where the source
must provide one (or, for a VMO that traps dirty transitions, a page that must be acknowledged
before it is written), the hierarchy raises `NeedPages` under its lock. The object layer then
*registers* a request with the source while still holding the lock (so that a supply racing
with the request cannot be missed), drops the lock, and *waits* for the request: it completes
when the source supplies (or dirties) every page of it, fails with a status, or is cancelled
when the VMO is detached or closed. The caller then retries its whole operation from the top,
as Zircon does with ``ZX_ERR_SHOULD_WAIT``.

Requests are batched over contiguous ranges: a need that falls inside an outstanding request
joins it instead of making a new one, and a new request never overlaps an outstanding one.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import TYPE_CHECKING, Protocol

import attrs

import vmo.trace as trace
from vmo.errors import Status, ZxError

if TYPE_CHECKING:
    from vmo.cow_pages import CowPages, NeedPages


class PageRequestCommand(enum.IntEnum):
    """What a page request asks of the pager (``ZX_PAGER_VMO_*``)."""

    READ = 0
    COMPLETE = 1
    DIRTY = 2


class PageSource(Protocol):
    """What the hierarchy needs of the source backing a root VMO."""

    #: Content comes from the source and must be kept (dirty tracking, supply_zero_offset).
    preserves_content: bool
    #: Writes to Clean pages must be acknowledged (a DIRTY request) before they happen.
    traps_dirty: bool

    def on_pages_supplied(self, node: CowPages, start: int, length: int) -> None: ...

    def on_pages_dirtied(self, node: CowPages, start: int, length: int) -> None: ...

    def on_resize(self, node: CowPages, start: int, end: int) -> None: ...

    def on_close(self, node: CowPages) -> None: ...

    def register_locked(self, need: NeedPages) -> Request: ...

    def wait(self, request: Request, timeout: float | None) -> None: ...


class AnonymousPageSource(PageSource, Protocol):
    """A source whose VMOs behave as anonymous memory (``anonymous = True``): DECOMMIT and ZERO
    free their pages, and the source is told so that it drops its copies of them."""

    anonymous: bool

    def on_pages_removed(self, node: CowPages, start: int, end: int) -> None: ...

    def on_root_merge(self, old_root: CowPages, new_root: CowPages, offset: int, start: int,
                      end: int) -> None:
        """The hidden root ``old_root`` (the source's root after a snapshot) is about to merge
        into its one remaining child ``new_root``, which sees ``[start, end)`` of its own
        offsets at ``offset + start`` of the old root: the source drops what the child cannot
        see, makes the rest answerable at the child's offsets, and serves ``new_root`` from
        now on. Called under the hierarchy lock; must not fail."""
        ...


@attrs.define(eq=False)
class Request:
    """One outstanding request: ``[offset, offset + length)`` pages of ``node``."""

    command: PageRequestCommand
    node: CowPages
    offset: int
    length: int
    pending: set[int]
    status: Status | None = None  # None while outstanding
    dispatched: bool = False  # handed to the pager (handler call or port packet)
    waiters: int = 0
    created: float = attrs.field(factory=time.monotonic)

    def overlaps(self, start: int, end: int) -> bool:
        return self.offset < end and start < self.offset + self.length


class RequestTracker:
    """Outstanding requests of one source, and the waiting on them.

    ``lock`` guards the request list; ``cond`` wakes waiters. The hierarchy lock may be held
    while taking ``lock`` (supplies arrive under it), never the reverse.
    """

    preserves_content = True
    traps_dirty = False

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.outstanding: list[Request] = []
        self.detached = False
        self.closed = False
        # Counters, for `metrics`-style reporting.
        self.requests_made = 0
        self.requests_joined = 0
        self.requests_failed = 0
        self.pages_supplied = 0

    # -- creation (hierarchy lock held) ---------------------------------------------------------

    def register_locked(self, need: NeedPages) -> Request:
        command = PageRequestCommand.DIRTY if need.dirty else PageRequestCommand.READ
        with self.lock:
            if self.detached or self.closed:
                raise ZxError(Status.ERR_BAD_STATE,
                              "the VMO's pager was detached; its content is gone")
            for req in self.outstanding:
                if (req.command == command and req.node is need.node
                        and req.offset <= need.offset < req.offset + req.length):
                    self.requests_joined += 1
                    return req
            end = need.offset + need.length
            for req in self.outstanding:
                if req.command == command and req.node is need.node and \
                        need.offset < req.offset < end:
                    end = req.offset  # never overlap an outstanding request
            req = Request(command, need.node, need.offset, end - need.offset,
                          set(range(need.offset, end)))
            self.outstanding.append(req)
            self.requests_made += 1
        if (tracer := need.node.hier.kernel.tracer) is not None:
            trace.request(tracer, need.node, req.offset, req.length, command.name.lower(),
                          "issued")
        return req

    # -- completion (hierarchy lock held by the caller) -----------------------------------------

    def _resolve(self, node: CowPages, start: int, length: int, command: PageRequestCommand | None,
                 status: Status, *, whole: bool = False) -> None:
        """Settle requests overlapping ``[start, start + length)``: with OK, only those whose
        every page is now covered (or all overlapping ones if ``whole``); with an error, all."""
        end = start + length
        with self.lock:
            changed = False
            for req in list(self.outstanding):
                if req.node is not node or (command is not None and req.command != command):
                    continue
                if not req.overlaps(start, end):
                    continue
                if status == Status.OK and not whole:
                    req.pending.difference_update(range(max(start, req.offset),
                                                        min(end, req.offset + req.length)))
                    if req.pending:
                        continue
                req.status = status
                self.outstanding.remove(req)
                changed = True
            if changed:
                self.cond.notify_all()

    def on_pages_supplied(self, node: CowPages, start: int, length: int) -> None:
        self.pages_supplied += length
        if (tracer := node.hier.kernel.tracer) is not None:
            trace.supplied(tracer, node, start, length)
        self._resolve(node, start, length, PageRequestCommand.READ, Status.OK)

    def on_pages_dirtied(self, node: CowPages, start: int, length: int) -> None:
        self._resolve(node, start, length, PageRequestCommand.DIRTY, Status.OK)

    def fail(self, node: CowPages, start: int, length: int, status: Status) -> None:
        self.requests_failed += 1
        if (tracer := node.hier.kernel.tracer) is not None:
            trace.request(tracer, node, start, length, "any", "failed", status)
        self._resolve(node, start, length, None, status)

    def on_resize(self, node: CowPages, start: int, end: int) -> None:
        # Requests past the new end can never be supplied: wake their waiters, whose retry
        # then sees the range out of bounds.
        self._resolve(node, start, end - start, None, Status.OK, whole=True)

    def cancel_all(self, node: CowPages, status: Status) -> None:
        with self.lock:
            for req in list(self.outstanding):
                if req.node is node:
                    req.status = status
                    self.outstanding.remove(req)
            self.cond.notify_all()

    def on_close(self, node: CowPages) -> None:
        self.closed = True
        self.cancel_all(node, Status.ERR_BAD_STATE)

    # -- waiting (no hierarchy lock held) -------------------------------------------------------

    def wait(self, request: Request, timeout: float | None) -> None:
        """Block until ``request`` completes; raise `ZxError` if it failed or timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            request.waiters += 1
            try:
                while request.status is None:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        if request.waiters == 1 and request in self.outstanding:
                            # Nobody waits for it any more: cancel it, so that the next access
                            # asks the pager again (a lost request must not block forever).
                            self.outstanding.remove(request)
                            request.status = Status.ERR_TIMED_OUT
                            if (tracer := request.node.hier.kernel.tracer) is not None:
                                trace.request(tracer, request.node, request.offset,
                                              request.length, request.command.name.lower(),
                                              "timed_out", Status.ERR_TIMED_OUT)
                        raise ZxError(Status.ERR_TIMED_OUT,
                                      f"page request [{request.offset}, +{request.length}) "
                                      f"pages was not resolved within {timeout} s")
                    self.cond.wait(remaining)
            finally:
                request.waiters -= 1
            status = request.status
        if status != Status.OK:
            raise ZxError(status, f"page request for pages [{request.offset}, "
                                  f"+{request.length}) failed")

