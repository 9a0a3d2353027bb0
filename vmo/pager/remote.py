"""Old import path of `vmo.mmu.workload`, kept so that user code keeps working.

The memory-management unit has its own package (`vmo.mmu`, see README's layout). Importing
`vmo.pager.remote` gives the very module object `vmo.mmu.workload`, so its names, its module-
level settings and monkeypatching behave exactly as through the new path.
"""

import sys

import vmo.mmu.workload as _module
from vmo.mmu.workload import *  # noqa: F403  (the names, for static type checkers)

if __name__ == "__main__":
    # ``python -m vmo.pager.remote``: the workload command line of earlier versions.
    sys.exit(_module.client_main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
sys.modules[__name__] = _module
