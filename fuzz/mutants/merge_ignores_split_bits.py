"""A merge moves a hidden page into the child even when the child's side had already forked it (the
page is stale: the child's side has its own copy deeper down).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='merge_ignores_split_bits',
    target='vmo.cow_pages:CowPages._merge_content_with_child_locked',
    old='                    if split[v] & child_side:\n',
    new="                    if False:  # MUTANT: a page the child's side forked is not dropped\n",
    description=__doc__.strip(),
)
