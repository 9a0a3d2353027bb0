"""A merge drops the hidden pages the removed side had forked (visible to the remaining child,
which must take them) instead of those the child's side had forked.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='merge_drops_visible_page',
    target='vmo.cow_pages:CowPages._merge_content_with_child_locked',
    old='                    if split[v] & child_side:\n',
    new="                    if split[v] & (child_side ^ 3):  # MUTANT: the removed side's bit\n",
    description=__doc__.strip(),
)
