"""An unaligned DECOMMIT of a pager-backed VMO is ERR_INVALID_ARGS instead of ERR_NOT_SUPPORTED:
alignment is checked before the page source (issue 9, point 9).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='decommit_checks_alignment_first',
    target='vmo.vm_object:Vmo.op_range',
    old='                # Zircon asks whether an absent page reads zero before it checks alignment.\n',
    new=('                if offset % PAGE_SIZE or length % PAGE_SIZE:  # MUTANT: alignment first\n'
         '                    raise ZxError(Status.ERR_INVALID_ARGS, "not page aligned")\n'),
    description=__doc__.strip(),
    machine="vmo.testing.pager_cow:PagerCowMachine",
)
