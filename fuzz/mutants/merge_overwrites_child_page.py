"""A merge moves the hidden node's page into the child even where the child has its own page or
marker (the child's newer content is lost, its frame leaked).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='merge_overwrites_child_page',
    target='vmo.cow_pages:CowPages._merge_content_with_child_locked',
    old='                if theirs.get(off) != EMPTY:\n',
    new="                if False:  # MUTANT: the child's own pages do not win\n",
    description=__doc__.strip(),
)
