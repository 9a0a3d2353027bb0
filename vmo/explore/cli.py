"""Old import path of `vmo.cli.explore`, kept so that user code keeps working.

The command line is the package `vmo.cli`, a module per command. Importing `vmo.explore.cli` gives the
very module object `vmo.cli.explore`, so its names and settings behave exactly as through the new path.
"""

import sys

import vmo.cli.explore as _module
from vmo.cli.explore import *  # noqa: F403  (the names, for static type checkers)

sys.modules[__name__] = _module
