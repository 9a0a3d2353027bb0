"""A hidden page is charged to the walker when its sibling CAN see it (the seed charges it
when the sibling cannot): committed_bytes counts a page for the wrong child.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='attribution_wrong_child',
    target='vmo.cow_pages:CowPages._count_attributed_ancestor_pages_locked',
    old='                if v != MARKER and (same_id or split[v] or not sib_lo <= off < sib_hi):\n',
    new='                if v != MARKER and (same_id or split[v] or sib_lo <= off < sib_hi):  # MUTANT\n',
    description=__doc__.strip(),
)
