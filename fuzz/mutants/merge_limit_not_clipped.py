"""Merging a hidden node whose own window was narrower than its child's does not narrow the child's
window: the child sees more of its new parent than the hidden node could.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='merge_limit_not_clipped',
    target='vmo.cow_pages:CowPages._merge_content_with_child_locked',
    old='                child.parent_limit = self.parent_limit - child.parent_offset\n',
    new='                pass  # MUTANT: the child keeps its wider window\n',
    description=__doc__.strip(),
)
