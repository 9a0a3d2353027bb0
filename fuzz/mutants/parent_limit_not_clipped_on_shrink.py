"""Releasing the tail of a child's window (shrink, zero to the end, merge) frees the pages but
leaves parent_limit where it was.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='parent_limit_not_clipped_on_shrink',
    target='vmo.cow_pages:CowPages._release_cow_parent_pages_helper_locked',
    old='self.parent_limit = min(start, self.parent_limit)',
    new='self.parent_limit = self.parent_limit  # MUTANT: not clipped',
    description=__doc__.strip(),
)
