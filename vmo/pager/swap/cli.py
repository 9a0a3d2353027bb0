"""Old import path of `vmo.cli.swap`, kept so that user code keeps working.

The command line is the package `vmo.cli`, a module per command. Importing `vmo.pager.swap.cli` gives the
very module object `vmo.cli.swap`, so its names and settings behave exactly as through the new path.
"""

import sys

import vmo.cli.swap as _module
from vmo.cli.swap import *  # noqa: F403  (the names, for static type checkers)

sys.modules[__name__] = _module
