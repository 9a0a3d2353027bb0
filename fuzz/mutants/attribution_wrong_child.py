"""Attribution of a hidden page goes to the first leaf below, even one whose window does not
include the page (committed_bytes counted for a VMO that cannot see the page).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='attribution_wrong_child',
    target='vmo.cow_pages:_first_seer',
    old='    if not (node.parent_start_limit <= off < node.parent_limit):\n        return None\n',
    new='    pass  # MUTANT: the window is not checked\n',
    description=__doc__.strip(),
)
