"""Merging a hidden node into its remaining child drops the hidden node's zero markers, so the
child sees its grandparent's content through them.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='marker_dropped_on_merge',
    target='vmo.cow_pages:CowPages._merge_content_with_child_locked',
    old='                child.page_list.set(c_off, MARKER)',
    new='                pass  # MUTANT: the zero marker is dropped',
    description=__doc__.strip(),
)
