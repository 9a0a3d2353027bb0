"""When the VMO a hidden node charges closes, the hidden ancestors keep charging it instead of the
side not walked through (issue 9, point 4; the seed's RemoveChildLocked re-points them): pages a
live VMO sees are charged to nobody.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='attribution_not_repointed',
    target='vmo.cow_pages:CowPages._remove_child_locked',
    old='        if child.page_attribution_user_id != self.page_attribution_user_id:\n',
    new='        if False:  # MUTANT: hidden ancestors keep the closed VMO\'s id\n',
    description=__doc__.strip(),
)
