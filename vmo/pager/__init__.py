"""Page sources: where a VMO's pages come from when the hierarchy has none (the layer above the
objects, below the memory-management unit `vmo.mmu`).

- `Pager` and its types (`vmo.pager.user_pager`): user code supplies VMO content.
- `FilePager` (`vmo.pager.file_pager`): a file served as a VMO, written back on `flush`.
- `vmo.pager.source`: the `PageSource` protocol and page-request tracking.
- `vmo.pager.swap`: the swap source (`SwapSource`).

The userfaultfd binding, the fault handler and workloads moved to `vmo.mmu`; ``vmo.pager.uffd``,
``vmo.pager.fault_handler`` and ``vmo.pager.remote`` remain as aliases of those modules.
"""

from vmo.pager.file_pager import FilePager, FilePagerMetrics
from vmo.pager.source import PageRequestCommand, PageSource
from vmo.pager.user_pager import (
    WRITEBACK_BEGIN_ZERO_RANGE,
    DirtyRange,
    DirtyRangeOptions,
    Pager,
    PageRequest,
    PagerOp,
    PagerVmoOptions,
    PagerVmoStats,
)

__all__ = [
    "WRITEBACK_BEGIN_ZERO_RANGE",
    "DirtyRange",
    "DirtyRangeOptions",
    "FilePager",
    "FilePagerMetrics",
    "PageRequest",
    "PageRequestCommand",
    "PageSource",
    "Pager",
    "PagerOp",
    "PagerVmoOptions",
    "PagerVmoStats",
]
