"""A merge keeps (leaks) the hidden page the child already covers instead of freeing it.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='merge_leaks_covered_page',
    target='vmo.cow_pages:CowPages._merge_content_with_child_locked',
    old='                if theirs.get(c_off) != EMPTY:\n                    if v > 0:\n                        freed.append(v)\n                    continue\n',
    new='                if theirs.get(c_off) != EMPTY:\n                    continue  # MUTANT: the covered hidden page is neither kept nor freed\n',
    description=__doc__.strip(),
)
