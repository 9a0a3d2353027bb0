"""Old import path of `vmo.mmu.mapping`, kept so that user code keeps working.

The memory-management unit has its own package (`vmo.mmu`, see README's layout). Importing
`vmo.mapping` gives the very module object `vmo.mmu.mapping`, so its names, its module-level
settings and monkeypatching behave exactly as through the new path.
"""

import sys

import vmo.mmu.mapping as _module
from vmo.mmu.mapping import *  # noqa: F403  (the names, for static type checkers)

sys.modules[__name__] = _module
