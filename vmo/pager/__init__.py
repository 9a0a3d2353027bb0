"""Page sources: the user pager (``zx_pager_*``), pagers built on it, and the userfaultfd binding.

- `Pager` and its types (`vmo.pager.user_pager`): user code supplies VMO content.
- `FilePager` (`vmo.pager.file_pager`): a file served as a VMO, written back on `flush`.
- `vmo.pager.source`: the `PageSource` protocol and page-request tracking.
- `vmo.pager.uffd`: the cffi userfaultfd/memory binding (imported on demand).
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
