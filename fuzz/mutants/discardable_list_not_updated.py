"""UNLOCK marks the VMO reclaimable but never puts it on the reclaim-candidate list, so it is never
discarded.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='discardable_list_not_updated',
    target='vmo.cow_pages:CowPages._move_to_list_locked',
    old='                k.reclaim_candidates[self] = None',
    new='                pass  # MUTANT: not put on the reclaim list',
    description=__doc__.strip(),
)
