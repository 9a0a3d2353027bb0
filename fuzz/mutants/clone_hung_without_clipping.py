"""An at-least-on-write clone hung below a higher ancestor keeps its full limit instead of the part
each level on the way could see (pager-backed VMOs only).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='clone_hung_without_clipping',
    target='vmo.cow_pages:CowPages.create_clone_locked',
    old='min(child_limit,',
    new='(lambda limit, _: limit)(child_limit,  # MUTANT: not clipped on the way up\n',
    description=__doc__.strip(),
    machine="vmo.testing.pager_cow:PagerCowMachine",
)
