"""Old import path of `vmo.cli.trace`, kept so that user code keeps working.

The command line is the package `vmo.cli`, a module per command. Importing `vmo.trace_cli` gives the
very module object `vmo.cli.trace`, so its names and settings behave exactly as through the new path.
"""

import sys

import vmo.cli.trace as _module
from vmo.cli.trace import *  # noqa: F403  (the names, for static type checkers)

sys.modules[__name__] = _module
