"""Reclaim marks a discardable VMO discarded but keeps its pages.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='discard_keeps_pages',
    target='vmo.cow_pages:CowPages.discard_locked',
    old='        frames = [v for _, v in self.page_list.take_range(0) if v > 0]\n',
    new='        frames = []  # MUTANT: the pages are not dropped\n',
    description=__doc__.strip(),
)
