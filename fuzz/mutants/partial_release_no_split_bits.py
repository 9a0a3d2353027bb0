"""A release of a range in the middle of a child's window (which its limits cannot express) does
not set the child's split bit on the pages it no longer sees.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='partial_release_no_split_bits',
    target='vmo.cow_pages:CowPages._release_cow_parent_pages_helper_locked',
    old='                pmm.split[v] |= mine\n',
    new='                pass  # MUTANT: no split bit for a hole in the window\n',
    description=__doc__.strip(),
)
