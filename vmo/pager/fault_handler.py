"""Old import path of `vmo.mmu.fault_handler`, kept so that user code keeps working.

The memory-management unit has its own package (`vmo.mmu`, see README's layout). Importing
`vmo.pager.fault_handler` gives the very module object `vmo.mmu.fault_handler`, so its names,
its module-level settings and monkeypatching behave exactly as through the new path.
"""

import sys

import vmo.mmu.fault_handler as _module
from vmo.mmu.fault_handler import *  # noqa: F403  (the names, for static type checkers)

sys.modules[__name__] = _module
