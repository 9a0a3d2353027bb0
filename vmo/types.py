"""Option flags, operation codes and the small value types of the public API.

Values are Zircon's (``ZX_VMO_*``, ``ZX_VMO_OP_*``, ``ZX_INFO_VMO_*``) so that numbers seen in
Fuchsia documentation and traces mean the same here.
"""

from __future__ import annotations

import enum

import attrs


class VmoOptions(enum.IntFlag):
    RESIZABLE = 1 << 1
    DISCARDABLE = 1 << 2


class ChildOptions(enum.IntFlag):
    SNAPSHOT = 1 << 0
    RESIZABLE = 1 << 2
    SLICE = 1 << 3
    SNAPSHOT_AT_LEAST_ON_WRITE = 1 << 4
    NO_WRITE = 1 << 5


class VmoOp(enum.IntEnum):
    COMMIT = 1
    DECOMMIT = 2
    LOCK = 3
    UNLOCK = 4
    CACHE_SYNC = 6
    CACHE_INVALIDATE = 7
    CACHE_CLEAN = 8
    CACHE_CLEAN_INVALIDATE = 9
    ZERO = 10
    TRY_LOCK = 11
    DONT_NEED = 12
    ALWAYS_NEED = 13
    PREFETCH = 14


class VmoInfoFlags(enum.IntFlag):
    PAGED = 1 << 0
    RESIZABLE = 1 << 1
    IS_COW_CLONE = 1 << 2
    VIA_HANDLE = 1 << 3
    VIA_MAPPING = 1 << 4
    PAGER_BACKED = 1 << 5
    CONTIGUOUS = 1 << 6
    DISCARDABLE = 1 << 7
    IMMUTABLE = 1 << 8


class Perms(enum.IntFlag):
    READ = 1 << 0
    WRITE = 1 << 1


@attrs.define(frozen=True)
class LockState:
    offset: int
    size: int
    discarded_offset: int
    discarded_size: int


@attrs.define(frozen=True)
class VmoInfo:
    koid: int
    name: str
    size_bytes: int
    parent_koid: int
    num_children: int
    num_mappings: int
    share_count: int
    flags: VmoInfoFlags
    committed_bytes: int
    populated_bytes: int


@attrs.define(frozen=True)
class MemoryStats:
    """Kernel memory statistics (``ZX_INFO_KMEM_STATS``, in pages)."""

    total_pages: int
    free_pages: int
    vmo_pages: int
    pinned_pages: int
    pager_backed_pages: int
    pager_backed_dirty_pages: int
    discardable_locked_pages: int
    discardable_unlocked_pages: int
    page_size: int
    #: Pages the seed keeps in a hidden node although no VMO is charged for them (no leaf can
    #: see them until a merge or a close frees them). Summed over live VMOs, committed pages
    #: plus these equal ``vmo_pages``.
    unreachable_pages: int = 0

    @property
    def total_bytes(self) -> int:
        return self.total_pages * self.page_size

    @property
    def free_bytes(self) -> int:
        return self.free_pages * self.page_size

    @property
    def vmo_bytes(self) -> int:
        return self.vmo_pages * self.page_size
