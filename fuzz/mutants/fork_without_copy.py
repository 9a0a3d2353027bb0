"""A fork allocates the child's copy but does not copy the hidden page's bytes into it.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='fork_without_copy',
    target='vmo.cow_pages:CowPages._clone_cow_page_locked',
    old='                pmm.copy_frame(cover, target)\n',
    new="                pass  # MUTANT: the new page's content is not copied\n",
    description=__doc__.strip(),
)
