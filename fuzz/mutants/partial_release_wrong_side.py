"""A release of a hole in the middle of a child's window (a partial release) sets the split bit of
the sibling, which still sees the pages, instead of the releasing side's.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='partial_release_wrong_side',
    target='vmo.cow_pages:CowPages._release_cow_parent_pages_helper_locked',
    old='                pmm.split[v] |= mine\n',
    new="                pmm.split[v] |= other  # MUTANT: the sibling's bit for our hole\n",
    description=__doc__.strip(),
)
