"""Releasing parent pages frees them even where the sibling can still see them.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='release_frees_sibling_pages',
    target='vmo.cow_pages:CowPages._release_cow_parent_pages_helper_locked',
    old='            if not sibling_visible or pmm.split[v] & other:\n',
    new='            if True:  # MUTANT: freed even if the sibling sees it\n',
    description=__doc__.strip(),
)
