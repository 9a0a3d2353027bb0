"""A snapshot's parent_limit is its size, not clipped to the end of the parent: its window reaches
past the hidden node's end.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='snapshot_limit_not_clipped',
    target='vmo.cow_pages:CowPages.create_clone_locked',
    old='child_limit = 0 if offset >= self.size else min(size, self.size - offset)',
    new="child_limit = size  # MUTANT: not clipped to the parent's end",
    description=__doc__.strip(),
)
