"""``python -m vmo``: the command line of `vmo.cli`."""

import sys

from vmo.cli import main

if __name__ == "__main__":
    sys.exit(main())
