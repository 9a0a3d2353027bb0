"""The write path's content walk does not stop at the parent's size: a child whose window reached
past its parent's end would look at offsets the parent no longer has. An equivalent mutant: no
window reaches past its parent's end (see ``equivalent``), so no program can tell.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='find_initial_content_ignores_parent_size',
    target='vmo.cow_pages:CowPages.find_initial_content_locked',
    old='            if p_off >= parent.size:\n                break\n',
    new="            pass  # MUTANT: the parent's size is not checked\n",
    description=__doc__.strip(),
    machine="vmo.testing.pager_cow:PagerCowMachine",
    equivalent="every parent_limit is clipped to the parent's size wherever a size or a window "
               "changes (clone, resize of the parent, merge, release), so cur_off < "
               "parent_limit already implies parent_offset + cur_off < parent.size; the check "
               "is defense in depth. It becomes live if a path forgets to clip a limit "
               "(snapshot_limit_not_clipped, child_limits_not_updated_on_resize).",
)
