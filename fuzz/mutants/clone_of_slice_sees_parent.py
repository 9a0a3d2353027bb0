"""An at-least-on-write clone of a slice is made on the slice's parent instead of on the slice's
own node, so it is not clipped to the slice and reads the parent's pages beyond it (issue 9,
point 1; the seed's CreateCloneLocked runs on the slice's node).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='clone_of_slice_sees_parent',
    target='vmo.vm_object:Vmo.create_child',
    old='                node = cow.create_clone_locked(snapshot, offset // PAGE_SIZE, size // PAGE_SIZE)\n',
    new='                base, delta = cow.slice_parent() if cow.is_slice else (cow, 0)  # MUTANT\n'
        '                node = base.create_clone_locked(snapshot, offset // PAGE_SIZE + delta,\n'
        '                                                size // PAGE_SIZE)\n',
    description=__doc__.strip(),
    machine="vmo.testing.pager_machine:PagerStateMachine",
)
