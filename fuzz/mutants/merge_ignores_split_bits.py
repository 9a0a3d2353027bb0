"""A merge moves a hidden page into the child even when the child's side had already forked it (the
page is stale: the child's side has its own copy deeper down).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='merge_ignores_split_bits',
    target='vmo.cow_pages:CowPages._merge_content_with_child_locked',
    old='                if pmm.split[v] & child_side or (\n',
    new="                if False or (  # MUTANT: a page the child's side forked is not dropped\n",
    description=__doc__.strip(),
    equivalent="the same condition's other clause, and the check of the child's own entry before "
               "it, drop every page the child's side forked: a leaf child that forked holds its "
               "own entry, and below a hidden child the fork either left a copy in the child or "
               "migrated to the only grandchild that saw the page, so no leaf of the child sees "
               "the hidden one. The core asks the leaves (since 8cc4d1d); the split bit is "
               "redundant here. merge_drops_visible_page breaks the same clause detectably.",
)
