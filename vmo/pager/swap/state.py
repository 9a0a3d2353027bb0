"""The swap source's state machine, its transitions, and its metrics.

Model: crosvm's vmm-swap ``State`` and ``SwapStatus`` (what ``crosvm swap status`` prints):

- ``READY``: nothing is out; every page of every VMO is in the arena (or was never populated).
- ``PENDING``: pages were moved to staging (`SwapSource.move_to_staging`) and wait there.
- ``ACTIVE``: staging is empty and pages are in the swap file (`SwapSource.swap_out`).
- ``SWAP_IN_IN_PROGRESS``: `SwapSource.swap_in` is bringing pages back.
- ``FAILED``: a step failed (a swap-file write: ``ENOSPC``, ``EIO``; a swap-in that could not
  allocate). Nothing was lost -- pages that could not be written stay in staging and stay
  readable -- and the reason is in ``status().error``. A completed `SwapSource.swap_in`
  recovers (back to ``READY``).

Each transition is recorded with the pages the step moved and the time it took, as crosvm's
``StateTransition`` (``pages``, ``time_ms``). Metrics are counts of pages unless named bytes;
the copy counters (``copied_from_*``, ``zeroed``, ``redundant``) count since the source was
created.
"""

from __future__ import annotations

import enum
import json
import time
from typing import Any

import attrs


class SwapState(enum.Enum):
    READY = "ready"
    PENDING = "pending"
    ACTIVE = "active"
    SWAP_IN_IN_PROGRESS = "swap_in_in_progress"
    FAILED = "failed"


@attrs.define(frozen=True)
class SwapMetrics:
    """What the swap source holds and what it did (see the module docstring)."""

    resident_pages: int  # pages of the source's VMOs in the arena
    staging_pages: int  # pages in staging memory
    swap_pages: int  # pages in the swap file
    copied_from_staging_pages: int  # pages brought back from staging (faults and swap-in)
    copied_from_file_pages: int  # pages brought back from the swap file (faults and swap-in)
    zeroed_pages: int  # absent pages supplied as zeros (never populated, removed, trimmed)
    redundant_pages: int  # requested pages found present already (a racing request won)
    trimmed_clean_pages: int  # staged pages dropped because the swap file holds them unchanged
    trimmed_zero_pages: int  # staged pages dropped because they are all zeros
    dropped_clean_pages: int  # pages of a source below dropped rather than staged (stacking)
    swap_in_pages: int  # pages brought back eagerly by swap_in (of the copied ones)
    bytes_written: int  # bytes written to the swap file
    bytes_read: int  # bytes read from the swap file
    staging_bytes: int  # memory the staging memfds hold (allocated blocks)
    swap_file_bytes: int  # disk the swap files hold (allocated blocks)

    def to_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


#: The counters `SwapMetrics` reports that the handler increments (the others are measured).
COUNTERS = ("copied_from_staging_pages", "copied_from_file_pages", "zeroed_pages",
            "redundant_pages", "trimmed_clean_pages", "trimmed_zero_pages",
            "dropped_clean_pages", "swap_in_pages", "bytes_written", "bytes_read")


@attrs.define(frozen=True)
class SwapTransition:
    """One state change: from, to, the pages the steps since the previous change moved, the
    time they took, and when (``time.time()``) it happened."""

    from_state: SwapState
    to_state: SwapState
    pages: int
    seconds: float
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.from_state.value, "to": self.to_state.value, "pages": self.pages,
                "time_ms": round(self.seconds * 1000, 3), "at": self.at}


@attrs.define(frozen=True)
class SwapStatus:
    """A snapshot of the source: ``state``, ``metrics``, ``transitions`` (oldest first, at most
    the last `MAX_TRANSITIONS`), ``error`` (the reason of ``FAILED``, else None)."""

    state: SwapState
    metrics: SwapMetrics
    transitions: tuple[SwapTransition, ...]
    error: str | None

    def state_transition(self) -> dict[str, dict[str, float]]:
        """The last transition into each state, as crosvm's ``state_transition``."""
        out: dict[str, dict[str, float]] = {}
        for t in self.transitions:
            out[t.to_state.value] = {"pages": t.pages, "time_ms": round(t.seconds * 1000, 3)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "metrics": self.metrics.to_dict(),
                "state_transition": self.state_transition(),
                "transitions": [t.to_dict() for t in self.transitions], "error": self.error}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)


MAX_TRANSITIONS = 256


class StateTracker:
    """The current state, and the work done since the last transition.

    Steps report what they did with `account`; `enter` records a transition with the pages and
    time accumulated since the previous one. Not thread-safe: the source calls it under its
    own lock.
    """

    def __init__(self) -> None:
        self.state = SwapState.READY
        self.error: str | None = None
        self.transitions: list[SwapTransition] = []
        self._pages = 0
        self._seconds = 0.0

    def account(self, pages: int, seconds: float) -> None:
        self._pages += pages
        self._seconds += seconds

    def enter(self, state: SwapState, error: str | None = None) -> None:
        if state == SwapState.FAILED:
            self.error = error
        elif self.state == SwapState.FAILED:
            self.error = None
        if state == self.state:
            return
        self.transitions.append(SwapTransition(self.state, state, self._pages, self._seconds,
                                               time.time()))
        del self.transitions[:-MAX_TRANSITIONS]
        self.state = state
        self._pages = 0
        self._seconds = 0.0
