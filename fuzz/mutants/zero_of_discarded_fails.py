"""ZERO of a discarded VMO fails with ERR_NOT_FOUND; in the seed nothing on that path checks the
discarded state, and the ZERO succeeds and changes nothing (issue 9, point 9).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='zero_of_discarded_fails',
    target='vmo.cow_pages:CowPages.zero_bytes_locked',
    old='        # No discarded check, as in the seed: a discarded VMO holds no page, so zeroing it\n',
    new='        self._check_readable_locked()  # MUTANT: ZERO of a discarded VMO fails\n',
    description=__doc__.strip(),
)
