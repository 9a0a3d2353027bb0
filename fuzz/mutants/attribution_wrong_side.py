"""A snapshot charges the pages it shares with the original to the new clone instead of the
original (the seed's hidden node keeps the cloned VMO's page_attribution_user_id, which the left
child inherits): committed_bytes sums stay right, the sides are swapped.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='attribution_wrong_side',
    target='vmo.vm_object:Vmo.create_child',
    old='            self._num_children += 1\n',
    new='            self._num_children += 1\n'
        '            if child.cow.parent is not None and child.cow.parent.hidden:  # MUTANT\n'
        '                child.cow.parent.page_attribution_user_id = child.koid\n',
    description=__doc__.strip(),
)
