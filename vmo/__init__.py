"""vmo: Zircon's virtual memory objects (the VmCowPages copy-on-write hierarchy) over real memory.

Start with `Kernel`: ``with vmo.Kernel() as k: v = k.vmo_create(1 << 20)``. The public surface
is documented in docs/api.md; `vmo.debug` validates, dumps and draws hierarchies.
"""

from importlib import metadata as _metadata

import vmo.debug as debug
from vmo.errors import InvariantError, Status, ZxError
from vmo.kernel import Kernel
from vmo.mmu.mapping import FaultStats, Mapping
from vmo.pager import (
    WRITEBACK_BEGIN_ZERO_RANGE,
    DirtyRange,
    DirtyRangeOptions,
    Pager,
    PageRequest,
    PageRequestCommand,
    PagerOp,
    PagerVmoOptions,
    PagerVmoStats,
)
from vmo.pmm import PAGE_SIZE
from vmo.types import (
    ChildOptions,
    LockState,
    MemoryStats,
    Perms,
    VmoInfo,
    VmoInfoFlags,
    VmoOp,
    VmoOptions,
)
from vmo.vm_object import PinnedRange, Vmo

try:
    __version__: str = _metadata.version("vmo")
except _metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "PAGE_SIZE",
    "WRITEBACK_BEGIN_ZERO_RANGE",
    "DirtyRange",
    "DirtyRangeOptions",
    "PageRequest",
    "PageRequestCommand",
    "Pager",
    "PagerOp",
    "PagerVmoOptions",
    "PagerVmoStats",
    "ChildOptions",
    "InvariantError",
    "FaultStats",
    "Kernel",
    "LockState",
    "Mapping",
    "MemoryStats",
    "Perms",
    "PinnedRange",
    "Status",
    "Vmo",
    "VmoInfo",
    "VmoInfoFlags",
    "VmoOp",
    "VmoOptions",
    "ZxError",
    "debug",
]
