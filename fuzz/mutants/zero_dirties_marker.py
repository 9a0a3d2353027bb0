"""ZERO of a pager-backed VMO looks up a clean zero marker for write, dirtying it (a DIRTY
request, a dirty range, a committed page) where the seed's ZeroPagesLocked leaves a marker
alone (issue 9, point 3).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='zero_dirties_marker',
    target='vmo.cow_pages:CowPages._zero_pager_pages_locked',
    old='            if self.page_list.get(off) == MARKER:\n',
    new='            if False:  # MUTANT: a marker is looked up for write like any page\n',
    description=__doc__.strip(),
    machine="vmo.testing.pager_machine:PagerStateMachine",
)
