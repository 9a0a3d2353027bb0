"""A fork that copies a hidden page does not set the forking side's split bit, so the hidden node
still believes both sides can see its copy.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='split_bit_not_set',
    target='vmo.cow_pages:CowPages._clone_cow_page_locked',
    old='pmm.split[target] = side\n',
    new='pmm.split[target] = 0  # MUTANT: the split bit is not set\n',
    description=__doc__.strip(),
)
