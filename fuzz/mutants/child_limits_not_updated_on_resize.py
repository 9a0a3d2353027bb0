"""Shrinking a VMO with children hung below it (at-least-on-write clones of a pager-backed VMO)
does not clip their parent_limit: after the parent grows again they see its new tail instead of
the zeros they must read there.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='child_limits_not_updated_on_resize',
    target='vmo.cow_pages:CowPages.resize_locked',
    old='                    child.parent_limit = min(child.parent_limit, new_size - child.parent_offset)\n',
    new='                    pass  # MUTANT: children keep seeing the old tail\n',
    description=__doc__.strip(),
    machine="vmo.testing.pager_cow:PagerCowMachine",
)
