"""A fork migrates the hidden page into the forking child even though the other child can still see
it.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='migrate_when_both_see',
    target='vmo.cow_pages:CowPages._is_uni_accessible_locked',
    old='        return not ro + right.parent_start_limit <= off < ro + right.parent_limit\n',
    new='        return True  # MUTANT: migrates even when both sides see it\n',
    description=__doc__.strip(),
)
