"""The write path's content walk ignores parent_limit: a write past a child's window forks the
parent's page instead of starting from zeros.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='find_initial_content_ignores_parent_limit',
    target='vmo.cow_pages:CowPages.find_initial_content_locked',
    old='        while cur_off < cur.parent_limit:\n',
    new='        while cur.parent is not None and cur_off < cur.size:  # MUTANT: no parent_limit\n',
    description=__doc__.strip(),
)
