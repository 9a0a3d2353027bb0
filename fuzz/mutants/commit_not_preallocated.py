"""COMMIT of a snapshot clone allocates page by page instead of counting and allocating every
page it needs first: a commit that cannot fit commits part of the range and empties the arena
before it fails (seed: ``CommitRangeLocked`` preallocates; issue 9, point 6).
"""

from vmo.testing.mutation import Mutant

_CHECK = ('            if missing > free:\n'
          '                raise ZxError(Status.ERR_NO_MEMORY,\n'
          '                              f"COMMIT needs {missing} pages, {free} are free")\n')
_BLOCK = ('{check}'
          '            if self.parent is None:\n'
          '                # An anonymous root fills its own slots, chunk by chunk, from the allocator\n'
          '                # (`_writable_frames_locked` allocates each chunk whole, all or nothing).\n'
          '                for chunk in range(start, end, COMMIT_CHUNK):\n'
          '                    self._writable_frames_locked(chunk, min(end, chunk + COMMIT_CHUNK))\n'
          '                return\n'
          '            self.alloc_list = {alloc}\n')

# Both halves of the seed's rule go: the count against the free pages here, and the
# allocation up front (`_alloc_locked` falls back to the allocator, page by page, when the
# node's alloc_list is empty).
MUTANT = Mutant(
    name='commit_not_preallocated',
    target='vmo.cow_pages:CowPages.commit_range_locked',
    old=_BLOCK.format(check=_CHECK, alloc="self.pmm.alloc(missing, zero=False)"),
    new=_BLOCK.format(check="            pass  # MUTANT: no count against the free pages\n",
                      alloc="[]  # MUTANT: lookups allocate page by page"),
    description=__doc__.strip(),
)
