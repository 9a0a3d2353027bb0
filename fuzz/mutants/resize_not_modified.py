"""A resize of a pager-backed VMO does not mark it modified for ``query_vmo_stats`` (seed:
``VmObjectPaged::Resize`` does, on every successful resize; issue 9, point 9).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='resize_not_modified',
    target='vmo.vm_object:Vmo.set_size',
    old='                cow.modified = True\n',
    new='                pass  # MUTANT: the resize is not a modification\n',
    description=__doc__.strip(),
    machine="vmo.testing.pager_machine:PagerStateMachine",
)
