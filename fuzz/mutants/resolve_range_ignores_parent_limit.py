"""Reads look through to the parent past parent_limit (after a shrink and a grow the child sees its
parent's old content instead of zeros).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='resolve_range_ignores_parent_limit',
    target='vmo.cow_pages:CowPages.resolve_range',
    old='pending = [i for i in pending if i + delta < lim and i + pdelta < psize]',
    new='pending = [i for i in pending if i + pdelta < psize]  # MUTANT: no parent_limit',
    description=__doc__.strip(),
)
