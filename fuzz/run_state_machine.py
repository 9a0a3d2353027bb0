"""Run the oracle state machine for a fixed wall-clock time: a long campaign, e.g. in CI.

    python fuzz/run_state_machine.py --minutes 20 [--jobs 2] [--db PATH] [--seed N]

A thin wrapper over ``vmo fuzz`` (`vmo.testing.run`) that works from a checkout without
installing: plain status lines, the shared example database, and on failure the shrunk program
printed and saved under ``fuzz/failures/``. Exit status 1 when a program failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmo import cli  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--db", default=".hypothesis/vmo-fuzz")
    ap.add_argument("--steps", type=int, default=None,
                    help="rule calls per program (default: the machine's 50)")
    args = ap.parse_args()
    argv = ["fuzz", "--time", str(args.minutes * 60), "--jobs", str(args.jobs), "--plain",
            "--db", args.db]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.steps is not None:
        argv += ["--program-steps", str(args.steps)]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
