"""UNLOCK records the time of the first unlock only, so the reclaim list is no longer in unlock-
time order and min_age is measured from the wrong moment.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='unlock_no_time_order',
    target='vmo.cow_pages:CowPages.unlock_locked',
    old='self.last_unlock_time = time.monotonic()',
    new='self.last_unlock_time = self.last_unlock_time or time.monotonic()  # MUTANT',
    description=__doc__.strip(),
)
