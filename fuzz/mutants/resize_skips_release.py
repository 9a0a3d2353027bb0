"""Shrinking a child of a hidden node clips its window but does not release the parent's pages that
nobody can see any more (they stay, attributed to nobody).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='resize_skips_release',
    target='vmo.cow_pages:CowPages.resize_locked',
    old='            if self.parent is not None and self.parent.hidden:\n',
    new='            if False:  # MUTANT: parent pages are not released on shrink\n',
    description=__doc__.strip(),
)
