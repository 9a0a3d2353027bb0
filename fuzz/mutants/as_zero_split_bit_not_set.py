"""ZERO over a hidden page that the sibling still sees places the marker but does not set the
zeroing side's split bit.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='as_zero_split_bit_not_set',
    target='vmo.cow_pages:CowPages._clone_cow_page_as_zero_locked',
    old='            self.pmm.split[frame] |= side\n',
    new='            pass  # MUTANT: no split bit for the zeroed side\n',
    description=__doc__.strip(),
)
