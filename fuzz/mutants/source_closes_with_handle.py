"""The page source closes when the pager VMO's handle closes, although at-least-on-write clones
still depend on it: their later reads fail instead of reaching the pager (seed: the source
closes in the root's ``fbl_recycle``, after the last clone; issue 9, point 7).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='source_closes_with_handle',
    target='vmo.cow_pages:CowPages.close_locked',
    old='        self.paged_ref = None\n',
    new=('        self.paged_ref = None\n'
         '        if self.page_source is not None and self.parent is None:  # MUTANT\n'
         '            self.page_source.on_close(self)\n'),
    description=__doc__.strip(),
    machine="vmo.testing.pager_lifecycle:PagerLifecycleMachine",
)
