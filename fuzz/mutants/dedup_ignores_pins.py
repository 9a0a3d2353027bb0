"""The zero-page scanner replaces a pinned all-zero page by a marker and frees it while a device
may still be using it.
"""

from vmo.testing.mutation import Mutant

MUTANT = Mutant(
    name='dedup_ignores_pins',
    target='vmo.cow_pages:CowPages.scan_for_zero_pages_locked',
    old='if pmm.pin_count[v] == 0 and pmm.is_zero(v):',
    new='if pmm.is_zero(v):  # MUTANT: pinned pages are deduplicated too',
    description=__doc__.strip(),
)
