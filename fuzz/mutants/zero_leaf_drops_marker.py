"""ZERO of a leaf's own page frees the page but places no marker, so the parent's content shows
through again.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='zero_leaf_drops_marker',
    target='vmo.cow_pages:CowPages.zero_pages_locked',
    old='            self.page_list.set(off, MARKER)\n',
    new="            pass  # MUTANT: no zero marker over the parent's content\n",
    description=__doc__.strip(),
)
