"""A fork migrates the hidden page into the forking child even though the other child can still see
it.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='migrate_when_both_see',
    target='vmo.cow_pages:CowPages._is_uni_accessible_locked',
    old='        return seen_by <= 1\n',
    new='        return seen_by <= 2  # MUTANT: migrates even when both sides see it\n',
    description=__doc__.strip(),
)
