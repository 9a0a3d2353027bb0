"""Discardable reclaim takes the most recently unlocked VMO first instead of the oldest unlock
(the seed's ReclaimPagesFromDiscardableVmos walks the reclaim list from its head).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='reclaim_newest_first',
    target='vmo.kernel:Kernel.reclaim_discardable',
    old='            candidates = list(st.reclaim_candidates)\n',
    new='            candidates = list(reversed(st.reclaim_candidates))  # MUTANT: newest first\n',
    description=__doc__.strip(),
)
