"""A write asks for the DIRTY transition of its whole range at once instead of at most
``LookupInfo::kMaxPages`` (16) pages per request (issue 9, point 8).
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='dirty_request_not_batched',
    target='vmo.cow_pages:CowPages._prepare_for_write_locked',
    old='        end = min(start + min(count, LOOKUP_MAX_PAGES), self.size)\n',
    new='        end = min(start + count, self.size)  # MUTANT: one request for the whole write\n',
    description=__doc__.strip(),
    machine="vmo.testing.pager_lifecycle:PagerLifecycleMachine",
)
