"""A region: one VMO's pages outside the arena, in its staging memory and its swap file.

Model: crosvm's ``Region`` in ``page_handler.rs`` (a head page, a `SwapFile`, a
`StagingMemory`). Here a region is the root node of one VMO of the swap source; its staging
memfd and swap file are created on first use (a VMO that is never moved out costs no file
descriptor) and follow the node's size.

Every method expects the hierarchy lock of the region's node held: that lock is what orders a
page's moves between the arena, staging and the swap file with every access to the VMO.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmo.pager.swap.file import SwapFile
from vmo.pager.swap.staging import StagingMemory

if TYPE_CHECKING:
    from vmo.cow_pages import CowPages


class Region:
    def __init__(self, node: CowPages, directory: str, name: str) -> None:
        self.node = node
        self.directory = directory
        self.name = name
        self.staging: StagingMemory | None = None
        self.file: SwapFile | None = None
        self.closed = False

    def staging_locked(self) -> StagingMemory:
        """The staging memory, created (and sized to the node) on first use."""
        if self.staging is None:
            self.staging = StagingMemory(self.node.size, f"vmo-swap-{self.name}")
        elif self.staging.num_pages != self.node.size:
            self.staging.resize(self.node.size)
        return self.staging

    def file_locked(self) -> SwapFile:
        """The swap file, created in the swap directory on first use. Raises `OSError`."""
        if self.file is None:
            self.file = SwapFile(self.directory, self.node.size)
        elif self.file.num_pages != self.node.size:
            self.file.resize(self.node.size)
        return self.file

    def retire_file_locked(self) -> int:
        """Let go of the swap file (it holds nothing the VMO needs); returns its descriptor,
        now the caller's. The next swap-out creates a new file."""
        assert self.file is not None
        fd, self.file.fd = self.file.fd, -1
        self.file = None
        return fd

    def sync_size_locked(self) -> None:
        """Follow a resize of the node (shrinks already dropped their pages; see
        `PageHandler.remove_locked`)."""
        size = self.node.size
        if self.staging is not None and self.staging.num_pages != size:
            self.staging.resize(size)
        if self.file is not None and self.file.num_pages != size:
            self.file.resize(size)

    @property
    def staging_pages(self) -> int:
        return 0 if self.staging is None else self.staging.present_pages

    @property
    def swap_pages(self) -> int:
        return 0 if self.file is None else self.file.present_pages

    def close(self) -> None:
        """Release the memfd and the file (their content is gone)."""
        self.closed = True
        if self.staging is not None:
            self.staging.close()
            self.staging = None
        if self.file is not None:
            self.file.close()
            self.file = None
