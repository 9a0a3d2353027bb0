"""Merging a hidden node into its remaining child drops the hidden node's zero markers, so the
child sees its grandparent's content through them.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='marker_dropped_on_merge',
    target='vmo.cow_pages:CowPages._merge_content_with_child_locked',
    old='                theirs.set(c_off, v)\n        self._free_frames_locked(freed)\n',
    new='                if v > 0:  # MUTANT: a zero marker is dropped\n                    theirs.set(c_off, v)\n        self._free_frames_locked(freed)\n',
    description=__doc__.strip(),
)
