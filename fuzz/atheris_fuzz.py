"""Coverage-guided fuzzing of the core with atheris (libFuzzer) over the state machine's rules.

    pip install -e '.[fuzz]'                       # atheris
    python fuzz/atheris_fuzz.py -max_total_time=60 -max_len=512 [corpus_dir]

Each input is a byte string that `vmo.testing.decode` turns into a program of the oracle state
machine (the same rules, strategies and invariants hypothesis drives; see that module), run
on a fresh kernel with every invariant after every step. libFuzzer keeps inputs that reach
new lines of the core (atheris instruments ``vmo`` on import) and mutates them further. When a
program fails, the program is printed in hypothesis's format and saved as a pytest repro under
``fuzz/failures/`` (``--failures-dir``), then the exception propagates so that libFuzzer writes
the crashing input (``crash-<sha1>``) as usual; ``python fuzz/atheris_fuzz.py crash-<sha1>``
replays it.

``--machine MODULE:CLASS`` fuzzes another machine (a subclass of `VmoStateMachine`, or one of
your own); ``--mutant NAME`` applies a mutant of ``fuzz/mutants`` first (to check that the
fuzzer finds it). Without atheris installed, ``--replay FILE...`` still decodes and runs
inputs, which is what the tests use.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:  # optional extra [fuzz]
    import atheris
except ImportError:  # pragma: no cover - depends on the environment
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["vmo"]):
        import vmo  # noqa: F401
        from vmo.testing import decode as decoding
        from vmo.testing.machine import VmoStateMachine
else:
    from vmo.testing import decode as decoding
    from vmo.testing.machine import VmoStateMachine

MAX_STEPS = 40


class Target:
    """``TestOneInput`` for a machine: decode, execute, report a failure."""

    def __init__(self, machine: type = VmoStateMachine, failures_dir: Path | None = None,
                 max_steps: int = MAX_STEPS) -> None:
        self.machine = machine
        self.failures_dir = failures_dir
        self.max_steps = max_steps
        self.runs = 0

    def __call__(self, data: bytes) -> None:
        self.runs += 1
        program = decoding.decode(data, self.machine, max_steps=self.max_steps)
        try:
            decoding.execute(program)
        except Exception as e:
            self.report(data, program, e)
            raise

    def report(self, data: bytes, program: Any, e: BaseException) -> Path | None:
        from vmo.testing.run import Failure, program_steps, write_repro

        text = program.text()
        digest = hashlib.sha1(data).hexdigest()[:12]
        sys.stderr.write(f"\n=== {type(e).__name__}: {e}\n=== program:\n{text}\n")
        if self.failures_dir is None:
            return None
        f = Failure(kind=type(e).__name__, message=str(e), program=text,
                    program_steps=program_steps(text), traceback="", seed=0, found_after=0.0)
        path = write_repro(f, self.machine, self.failures_dir, name=f"test_atheris_{digest}")
        sys.stderr.write(f"=== saved as {path}\n")
        return path


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    ap.add_argument("--machine", metavar="MODULE:CLASS")
    ap.add_argument("--mutant", metavar="NAME")
    ap.add_argument("--failures-dir", type=Path, default=ROOT / "fuzz" / "failures")
    ap.add_argument("--max-steps", type=int, default=MAX_STEPS)
    ap.add_argument("--replay", nargs="+", type=Path, metavar="FILE",
                    help="decode and run these inputs without atheris")
    ap.add_argument("--help-fuzz", action="help")
    return ap.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    args, rest = _parse(argv[1:])
    machine: type = VmoStateMachine
    if args.machine:
        from vmo.testing.mutation import _import_object

        machine = _import_object(args.machine)
    target = Target(machine, args.failures_dir, args.max_steps)
    ctx: Any = contextlib.nullcontext()
    if args.mutant:
        from vmo.testing.mutation import load_catalog

        ctx = {m.name: m for m in load_catalog()}[args.mutant].applied()
    with ctx:
        if args.replay:
            failed = 0
            for path in args.replay:
                try:
                    target(path.read_bytes())
                except Exception:  # noqa: BLE001 - reported by the target
                    failed += 1
            return 1 if failed else 0
        if atheris is None:
            sys.stderr.write("atheris is not installed (pip install -e '.[fuzz]'); only "
                             "--replay works without it\n")
            return 2
        # Programs need room: without these, libFuzzer starts from 4-byte inputs and grows
        # them slowly. Flags given on the command line win.
        defaults = [f for f in ("-max_len=1024", "-len_control=0")
                    if not any(r.startswith(f.split("=")[0] + "=") for r in rest)]
        atheris.Setup([argv[0], *defaults, *rest], target)
        atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
