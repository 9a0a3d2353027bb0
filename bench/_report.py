"""What every benchmark's report shares: when to print plain text, and what ``--quick`` means.

- Plain text whenever stdout is not a terminal (a pipe, a file, CI's log) as well as with
  ``--plain``: a rich table drawn for no terminal is cut at 80 columns and breaks words.
- ``--quick`` is a smoke run (small sizes, few rounds): its ratios are printed, but they are
  not measurements, so no row is judged PASS or FAIL and ``--check`` has nothing to fail.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

SMOKE_NOTE = ("--quick: a smoke run at small sizes; the ratios are printed as they came, not "
              "judged against the targets (run without --quick to measure).")


def plain(flag: bool, stream: Any = None) -> bool:
    """Plain text: asked for, or stdout (``stream``) is not a terminal."""
    stream = sys.stdout if stream is None else stream
    if flag:
        return True
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def smoke(results: Sequence[T], quick: bool) -> list[T]:
    """``results`` without verdicts when ``quick`` (each dataclass row's ``passed`` set to
    None, which the tables print as ``-``)."""
    if not quick:
        return list(results)
    return [dataclasses.replace(r, passed=None) for r in results]  # type: ignore[type-var]


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "-"}[passed]
