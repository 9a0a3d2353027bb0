"""Mutation checks: break one rule of the core on purpose and see the state machine catch it.

A `Mutant` names one function (``"vmo.cow_pages:CowPages._clone_cow_page_locked"``, or a
module-level ``"vmo.cow_pages:_first_seer"``), an exact piece of its source text, and the text
that replaces it. `Mutant.applied` takes the function's source (`inspect.getsource`), makes the
one replacement, compiles the result in the module's globals (with the module's
``from __future__ import annotations`` and at the original line numbers, so tracebacks point at
the right lines) and monkeypatches it in; leaving the block puts the original object back.
Nothing is edited on disk. If the target text is gone because the core changed, applying fails
loudly with `StaleMutant`: update the mutant's text rather than dropping it.

The project's catalogue lives in ``fuzz/mutants/`` (one module per mutant with a ``MUTANT``
attribute; `load_catalog`). ``vmo fuzz --mutants`` runs a campaign against each, one subprocess
per mutant for isolation and a hard timeout (`run_mutants`), and prints a table: killed or
not, time to kill, length of the shrunk program. A kill counts only if the shrunk program
passes on the unmutated core (`replay`): otherwise the failure is not the mutant's doing.

Write your own mutants the same way to check that a machine of your own is strong enough::

    m = Mutant(name="no_copy", target="vmo.cow_pages:CowPages._clone_cow_page_locked",
               old="pmm.copy_frame(cover, target)", new="pass", description="...")
    result = run_mutant(m, seconds=30)
    assert result.killed
"""

from __future__ import annotations
import __future__

import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import attrs

__all__ = [
    "Mutant",
    "MutantResult",
    "StaleMutant",
    "default_catalog_dir",
    "load_catalog",
    "minimize_kill",
    "replay",
    "run_mutant",
    "run_mutants",
]


class StaleMutant(RuntimeError):
    """The mutant's target text is not (exactly once) in the current source of its target."""


def _resolve(target: str) -> tuple[Any, Any, str]:
    """``"module:Owner.attr"`` -> (module, owner object, attribute name)."""
    module_name, _, path = target.partition(":")
    if not path:
        raise ValueError(f"mutant target {target!r} is not 'module:name' or 'module:Class.name'")
    module = importlib.import_module(module_name)
    owner: Any = module
    parts = path.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part)
    return module, owner, parts[-1]


def _dedent_like_first_line(src: str) -> str:
    """Remove the first line's indentation from every line (a method's source is indented by
    its class). Unlike `textwrap.dedent`, a replacement that continues a bracketed expression
    on a less indented line does not change how much is removed."""
    first = src.splitlines()[0] if src else ""
    indent = first[: len(first) - len(first.lstrip())]
    if not indent:
        return src
    return "".join(line[len(indent):] if line.startswith(indent) else line
                   for line in src.splitlines(keepends=True))


def _import_object(spec: str) -> Any:
    module_name, _, name = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


@attrs.frozen
class Mutant:
    """One exact textual change to one function of the core."""

    name: str
    target: str  #: ``"module:Class.method"`` or ``"module:function"``
    old: str  #: exact text, as in the file (indentation included), found exactly once
    new: str  #: what replaces it
    description: str  #: the bug, in words
    #: The state machine that must kill it (``"module:Class"``); None: `VmoStateMachine`.
    machine: str | None = None
    #: Why no program can tell this mutant from the core (an *equivalent* mutant: the code it
    #: breaks is redundant with checks elsewhere). Kept for documentation and for the day the
    #: redundancy goes; `run_mutants` reports it and does not count it as a survivor.
    equivalent: str | None = None

    def original(self) -> Any:
        """The target as it is now (the raw class attribute for methods)."""
        _, owner, attr = _resolve(self.target)
        try:
            return inspect.getattr_static(owner, attr)
        except AttributeError as e:
            raise StaleMutant(f"stale mutant {self.name}: {self.target} does not exist") from e

    def mutated_source(self) -> str:
        """The target's source with the replacement made; raises `StaleMutant`."""
        src = inspect.getsource(self.original())
        count = src.count(self.old)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            raise StaleMutant(
                f"stale mutant {self.name}: target text {where} in {self.target}; update the "
                f"mutant to the current source.\n--- target text:\n{self.old}")
        return _dedent_like_first_line(src.replace(self.old, self.new))

    def build(self) -> Any:
        """The mutated function, compiled in the target module's globals."""
        module, _, attr = _resolve(self.target)
        fn = self.original()
        src = self.mutated_source()
        filename = inspect.getsourcefile(fn) or f"<mutant {self.name}>"
        code = compile("\n" * (fn.__code__.co_firstlineno - 1) + src, filename, "exec",
                       flags=__future__.annotations.compiler_flag, dont_inherit=True)
        namespace: dict[str, Any] = {}
        exec(code, module.__dict__, namespace)  # noqa: S102 - that is the technique
        new = namespace[attr]
        new.__mutant__ = self.name
        return new

    @contextlib.contextmanager
    def applied(self) -> Iterator[Mutant]:
        """Patch the mutated function in for the duration of the block."""
        _, owner, attr = _resolve(self.target)
        original = self.original()
        setattr(owner, attr, self.build())
        try:
            yield self
        finally:
            setattr(owner, attr, original)

    def machine_class(self) -> type:
        if self.machine is None:
            from vmo.testing.machine import VmoStateMachine

            return VmoStateMachine
        return _import_object(self.machine)


# ---------------------------------------------------------------------------- the catalogue

_CATALOG_OF: dict[str, Path] = {}  # mutant name -> the directory it was loaded from


def default_catalog_dir() -> Path:
    """``fuzz/mutants`` of the source checkout this package runs from (or of the cwd)."""
    here = Path(__file__).resolve().parents[2] / "fuzz" / "mutants"
    if here.is_dir():
        return here
    return Path.cwd() / "fuzz" / "mutants"


def load_catalog(directory: str | os.PathLike[str] | None = None) -> list[Mutant]:
    """Every ``MUTANT`` of the modules in ``directory`` (default `default_catalog_dir`), by
    name. The directory is loaded as a package, so it needs no place on ``sys.path``."""
    directory = Path(directory) if directory is not None else default_catalog_dir()
    if not (directory / "__init__.py").is_file():
        raise FileNotFoundError(f"no mutant catalogue (a package with __init__.py) at "
                                f"{directory}; pass --mutants-dir")
    pkg_name = "_vmo_mutants_" + str(abs(hash(str(directory.resolve()))))
    if pkg_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            pkg_name, directory / "__init__.py", submodule_search_locations=[str(directory)])
        assert spec is not None and spec.loader is not None
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[pkg_name] = pkg
        spec.loader.exec_module(pkg)
    out = []
    for info in sorted(pkgutil.iter_modules([str(directory)]), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{pkg_name}.{info.name}")
        mutant = getattr(mod, "MUTANT", None)
        if isinstance(mutant, Mutant):
            if mutant.name != info.name:
                raise ValueError(f"{info.name}.py defines a mutant named {mutant.name!r}")
            _CATALOG_OF[mutant.name] = directory.resolve()
            out.append(mutant)
    return out


# ---------------------------------------------------------------------------- replaying


def replay(program: str, machine: type) -> BaseException | None:
    """Run a printed program (``state = Machine()`` ... ``state.teardown()``) against
    ``machine``; returns what it raised, or None. Teardown always runs."""
    lines = program.splitlines()
    if lines and lines[-1].strip() == "state.teardown()":
        lines = lines[:-1]
    ns: dict[str, Any] = {machine.__name__: machine}
    raised: BaseException | None = None
    try:
        exec(compile("\n".join(lines), "<program>", "exec"), ns)  # noqa: S102
    except BaseException as e:  # noqa: BLE001 - the answer
        raised = e
    state = ns.get("state")
    if state is not None:
        # Teardown checks what the last steps changed (machines that check incrementally run
        # their full checks there): a failure there is the program's, unless it already had one.
        try:
            state.teardown()
        except Exception as e:  # noqa: BLE001 - the answer
            if raised is None:
                raised = e
    return raised


# ---------------------------------------------------------------------------- running


@attrs.define
class MutantResult:
    """One row of the mutant table."""

    name: str
    killed: bool
    verdict: str  #: "killed", "survived", "stale", "false kill", "timeout", "error: ..."
    time_to_kill: float | None = None  #: seconds to the first failing program
    program_steps: int | None = None  #: rule calls in the shrunk program
    failure: str = ""  #: what the shrunk program raised
    elapsed: float = 0.0  #: seconds, shrinking included
    steps: int = 0  #: rule calls the campaign ran
    repro_path: str | None = None
    program: str = ""  #: the shrunk program that kills the mutant (hypothesis's printout)
    #: Programs that passed before the killing one (0: the first program killed it, e.g. one
    #: replayed from the example database).
    programs_before: int | None = None

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))


def run_mutant(mutant: Mutant, *, seconds: float = 60.0, seed: int | None = None,
               machine: type | None = None, settings: Any = None,
               repro_dir: str | os.PathLike[str] | None = None,
               progress: Callable[[Any], None] | None = None,
               shrink_seconds: float | None = 60.0, database: Any = None) -> MutantResult:
    """Fuzz ``machine`` with ``mutant`` applied, in this process, and judge the outcome.

    A program that fails counts as a kill only if it passes on the unmutated core (`replay`):
    one that fails there too exposes a bug of the core or the machine, not the mutant (a
    *false kill*). The campaign then goes on with the next seed for what is left of
    ``seconds``, so an independent bug does not hide the mutant. Campaigns do not shrink
    (hypothesis would shrink towards whatever fails, the independent bug included); the
    killing program is minimized afterwards, for up to ``shrink_seconds``, to the smallest
    program that still fails with the mutant and passes without it (`minimize_kill`).

    The verdict is "killed", "survived", "stale" (the target text is gone), "false kill" (only
    independent failures were found) or "error: ...".

    With a ``database`` (anything `vmo.testing.run.run` takes), programs stored there are
    replayed first and the killing program is stored: a fleet of campaigns against the same
    mutant shares its kills (``vmo fuzz --mutant NAME --db redis://...``).
    """
    from hypothesis import Phase

    from vmo.testing.run import Failure, program_steps, run, write_repro

    try:
        machine = machine or mutant.machine_class()
    except (ImportError, AttributeError) as e:
        return MutantResult(mutant.name, False, f"error: machine unavailable ({e})")
    try:
        mutant.mutated_source()
    except StaleMutant as e:
        return MutantResult(mutant.name, False, "stale", failure=str(e).splitlines()[0])
    if seed is None:
        import random

        seed = random.SystemRandom().randrange(2**32)
    phases: tuple[Phase, ...] = (Phase.explicit, Phase.generate, Phase.target)
    if database is not None:
        phases = (Phase.explicit, Phase.reuse, *phases[1:])
    no_shrink = {"phases": phases}
    overrides = no_shrink if settings is None else {**dict(settings), **no_shrink}
    start = time.monotonic()
    steps = 0
    attempt = 0
    independent: list[str] = []
    kill: Failure | None = None
    kill_time = 0.0
    while True:
        left = seconds - (time.monotonic() - start)
        if left <= 0:
            break
        offset = time.monotonic() - start
        with mutant.applied():
            result = run(machine, seconds=left, seed=seed + attempt, settings=overrides,
                         progress=progress, probes=False, database=database)
        steps += result.steps
        f = result.failure
        if f is None:
            break
        if not f.program:
            independent.append(f"{f.summary()} (no program)")
        else:
            again = replay(f.program, machine)
            if again is None:
                kill, kill_time = f, offset + f.found_after
                break
            first = str(again).splitlines()[0] if str(again) else ""
            independent.append(f"{f.summary()} -- also without the mutant: "
                               f"{type(again).__name__}: {first}")
        attempt += 1
    if kill is None or kill_time > seconds:
        verdict = "false kill" if independent else "survived"
        return MutantResult(mutant.name, False, verdict,
                            failure=independent[0] if independent else "",
                            elapsed=time.monotonic() - start, steps=steps)
    invariants = {inv.function.__name__ for inv in _setup(machine).invariants}
    program = minimize_kill(kill.program, machine, mutant, seconds=shrink_seconds or 0.0)
    with mutant.applied():
        raised = replay(program, machine)
    summary = kill.summary()
    if raised is not None:
        first = str(raised).splitlines()[0] if str(raised) else ""
        summary = f"{type(raised).__name__}: {first}"
    kill = attrs.evolve(kill, program=program, kind=type(raised).__name__ if raised else kill.kind,
                        message=str(raised) if raised else kill.message,
                        program_steps=program_steps(program, invariants), found_after=kill_time)
    repro_path = None
    if repro_dir is not None:
        context = (
            "from vmo.testing.mutation import load_catalog\n"
            f"{_catalog_import(_catalog_of(mutant), Path(repro_dir))}"
            f"MUTANT = {{m.name: m for m in load_catalog({_catalog_expr(_catalog_of(mutant), Path(repro_dir))})}}"
            f"[{mutant.name!r}]",
            "MUTANT.applied()")
        repro_path = str(write_repro(kill, machine, repro_dir, name=f"test_mutant_{mutant.name}",
                                     context=context))
    if independent:
        summary += f" (after {len(independent)} independent failure(s): {independent[0]})"
    return MutantResult(mutant.name, True, "killed", time_to_kill=kill_time,
                        program_steps=kill.program_steps, failure=summary,
                        elapsed=time.monotonic() - start, steps=steps, repro_path=repro_path,
                        program=program, programs_before=kill.programs_before)


def _catalog_is_default(catalog: Path) -> bool:
    return catalog.resolve() == default_catalog_dir().resolve()


def _catalog_import(catalog: Path, repro_dir: Path) -> str:
    return "" if _catalog_is_default(catalog) else "from pathlib import Path\n"


def _catalog_expr(catalog: Path, repro_dir: Path) -> str:
    """How a repro file in ``repro_dir`` finds the mutant catalogue, without an absolute path
    of this machine: the default catalogue by default (`default_catalog_dir`), any other
    relative to the repro file."""
    if _catalog_is_default(catalog):
        return ""
    rel = os.path.relpath(catalog.resolve(), repro_dir.resolve())
    return f"Path(__file__).resolve().parent / {Path(rel).as_posix()!r}"


def _setup(machine: type) -> Any:
    return cast(Any, machine).setup_state()


def _statements(program: str) -> list[str]:
    """The top-level statements of a printed program, each as its source text."""
    import ast

    tree = ast.parse(program)
    return [ast.get_source_segment(program, node) or "" for node in tree.body]


def minimize_kill(program: str, machine: type, mutant: Mutant, *,
                  seconds: float = 60.0) -> str:
    """The smallest program (greedily, within ``seconds``) that still fails with ``mutant``
    and passes without it: rule calls are dropped one at a time with the invariant checks that
    follow them, first in large chunks, then singly."""
    stmts = _statements(program)
    if not stmts:
        return program
    head = stmts[0]  # state = Machine()
    tail = stmts[-1] if stmts[-1].strip() == "state.teardown()" else None
    body = stmts[1:-1] if tail else stmts[1:]
    invariants = {f"state.{inv.function.__name__}()" for inv in _setup(machine).invariants}
    # Group each rule call with the invariant checks after it.
    steps: list[list[str]] = []
    lead: list[str] = []
    for st in body:
        if st.strip() in invariants:
            (steps[-1] if steps else lead).append(st)
        else:
            steps.append([st])

    def text(groups: list[list[str]]) -> str:
        lines = [head, *lead, *(s for g in groups for s in g)]
        return "\n".join(lines + ([tail] if tail else []))

    def kills(groups: list[list[str]]) -> bool:
        candidate = text(groups)
        with mutant.applied():
            if replay(candidate, machine) is None:
                return False
        return replay(candidate, machine) is None

    deadline = time.monotonic() + seconds
    chunk = max(1, len(steps) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        removed = False
        while i < len(steps) and time.monotonic() < deadline:
            candidate = steps[:i] + steps[i + chunk:]
            if candidate != steps and kills(candidate):
                steps = candidate
                removed = True
            else:
                i += chunk
        if not removed:
            chunk //= 2
    return text(steps)


def _catalog_of(mutant: Mutant) -> Path:
    return _CATALOG_OF.get(mutant.name, default_catalog_dir())


def run_mutants(names: Sequence[str] | None = None, *, seconds: float = 60.0, jobs: int = 1,
                seed: int = 0, catalog: str | os.PathLike[str] | None = None,
                shrink_timeout: float = 120.0, repro_dir: str | os.PathLike[str] | None = None,
                machine: str | None = None, on_event: Callable[[str, dict[str, Any]], None] | None = None
                ) -> list[MutantResult]:
    """Run ``python -m vmo fuzz --mutant NAME`` for each mutant (all by default), ``jobs`` at
    a time, each with a hard timeout of ``seconds + shrink_timeout``. ``machine``
    (``"module:Class"``) replaces every mutant's own machine. ``on_event(name, event)`` sees
    each subprocess's JSON events (``started``, ``found``, ``result``) as they come."""
    catalog_dir = Path(catalog) if catalog is not None else default_catalog_dir()
    mutants = load_catalog(catalog_dir)
    if names:
        unknown = sorted(set(names) - {m.name for m in mutants})
        if unknown:
            raise KeyError(f"no mutant named {', '.join(unknown)} in {catalog_dir}")
        mutants = [m for m in mutants if m.name in set(names)]
    pending = list(mutants)
    results: dict[str, MutantResult] = {}
    lock = threading.Lock()

    def emit(name: str, event: dict[str, Any]) -> None:
        if on_event is not None:
            with lock:
                on_event(name, event)

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                m = pending.pop(0)
            if m.equivalent:
                r = MutantResult(m.name, False, "equivalent", failure=m.equivalent)
                with lock:
                    results[m.name] = r
                emit(m.name, {"event": "result", **attrs.asdict(r)})
                continue
            emit(m.name, {"event": "started"})
            r = _run_isolated(m, catalog_dir, seconds, seed, shrink_timeout, repro_dir,
                              machine, emit)
            with lock:
                results[m.name] = r
            emit(m.name, {"event": "result", **attrs.asdict(r)})

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[m.name] for m in mutants]


def _run_isolated(m: Mutant, catalog_dir: Path, seconds: float, seed: int,
                  shrink_timeout: float, repro_dir: Any, machine: str | None,
                  emit: Callable[[str, dict[str, Any]], None]) -> MutantResult:
    cmd = [sys.executable, "-m", "vmo", "fuzz", "--mutant", m.name, "--json",
           "--mutants-dir", str(catalog_dir), "--time", str(seconds), "--seed", str(seed),
           "--no-db"]
    if repro_dir is not None:
        cmd += ["--failures-dir", str(repro_dir)]
    if machine is not None:
        cmd += ["--machine", machine]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    found: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    timer = threading.Timer(seconds + shrink_timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "found":
                found = event
                emit(m.name, event)
            elif event.get("event") == "result":
                final = event
        proc.wait()
        stderr = proc.stderr.read() if proc.stderr is not None else ""
    finally:
        timer.cancel()
    elapsed = time.monotonic() - start
    if final is not None:
        final.pop("event", None)
        return MutantResult(**final)
    if found is not None:
        return MutantResult(m.name, False, "timeout", failure=f"a program failed after "
                            f"{found['t']:.1f} s; judging it outlived the hard timeout",
                            elapsed=elapsed)
    if proc.returncode and proc.returncode < 0:
        return MutantResult(m.name, False, "timeout", elapsed=elapsed)
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"
    return MutantResult(m.name, False, f"error: {tail}", elapsed=elapsed)
