"""A supply takes pages from an aux VMO that has children: they move out from under the child
that shares them (seed: ``TakePagesLocked`` refuses an aux with children, ERR_BAD_STATE;
issue 9, point 5).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='supply_accepts_shared_aux',
    target='vmo.cow_pages:CowPages.take_pages_locked',
    old='        if self.children:\n',
    new='        if False:  # MUTANT: an aux with children gives its pages away\n',
    description=__doc__.strip(),
    machine="vmo.testing.pager_lifecycle:PagerLifecycleMachine",
)
