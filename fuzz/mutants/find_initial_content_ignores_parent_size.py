"""The write path's content walk does not stop at the parent's size: a child whose window reaches
past a shrunk (pager-backed) parent looks at offsets the parent no longer has. Only at-least-on-
write clones of pager-backed VMOs can reach this.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='find_initial_content_ignores_parent_size',
    target='vmo.cow_pages:CowPages.find_initial_content_locked',
    old='            if p_off >= parent.size:\n                break\n',
    new="            pass  # MUTANT: the parent's size is not checked\n",
    description=__doc__.strip(),
    machine='vmo.testing.pager_machine:PagerStateMachine',
)
