"""Decode a byte string into a program of a state machine: the front end for byte fuzzers.

Coverage-guided fuzzers (atheris, libFuzzer) mutate byte strings. `decode` maps any byte
string to a program of the same rules hypothesis runs (`VmoStateMachine` by default, or any
``RuleBasedStateMachine``): one byte picks the next rule among those whose bundles are not empty,
and the rule's arguments are decoded from the following bytes with the machine's own strategies
(integers, booleans, ``sampled_from``, ``just``, tuples, ``one_of`` and ``map`` are understood;
a machine with other strategies registers a decoder in `DECODERS` by argument name). A value from
a bundle is an index into the values that bundle holds. Initialize rules run first. Running out of
bytes ends the program, so every byte string is a valid program and small changes to the bytes
make small changes to the program: what a coverage-guided fuzzer needs.

`execute` runs a decoded program (rules, then every invariant, after each step; teardown at
the end) and `Program.text` prints it in hypothesis's format, which `vmo.testing.run.write_repro`
turns into a pytest file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import attrs
from hypothesis.stateful import Bundle, MultipleResults, RuleBasedStateMachine

__all__ = ["DECODERS", "ByteReader", "Call", "Program", "Undecodable", "decode", "execute"]

#: Decoders for argument names whose strategy `decode_strategy` does not understand:
#: ``name -> f(reader) -> value``.
DECODERS: dict[str, Callable[[ByteReader], Any]] = {}


class Undecodable(TypeError):
    """A rule argument's strategy is of a kind the decoder does not know."""


class ByteReader:
    """Reads small integers from a byte string; past its end it reads zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            self.pos += 1
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def integer(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        if span <= 1:
            return lo
        nbytes = (span - 1).bit_length() + 7 >> 3
        value = 0
        for _ in range(nbytes):
            value = value << 8 | self.byte()
        return lo + value % span


def _unwrap(strategy: Any) -> Any:
    seen = 0
    while True:
        inner = getattr(strategy, "wrapped_strategy", None)
        if inner is None or inner is strategy or seen > 20:
            return strategy
        strategy, seen = inner, seen + 1


def decode_strategy(strategy: Any, r: ByteReader, name: str = "") -> Any:
    """A value of ``strategy`` read from ``r`` (see the module docstring for what is known)."""
    if name in DECODERS:
        return DECODERS[name](r)
    s = _unwrap(strategy)
    kind = type(s).__name__
    if kind == "IntegersStrategy":
        lo = s.start if s.start is not None else -(2**31)
        hi = s.end if s.end is not None else 2**31
        return r.integer(lo, hi)
    if kind == "BooleansStrategy":
        return bool(r.byte() & 1)
    if kind in ("SampledFromStrategy", "JustStrategy"):
        elements = list(s.elements)
        value = elements[r.integer(0, len(elements) - 1)]
        for how, f in getattr(s, "_transformations", ()):
            if how != "map":
                raise Undecodable(f"{name}: a filtered sampled_from is not supported")
            value = f(value)
        return value
    if kind == "TupleStrategy":
        return tuple(decode_strategy(e, r) for e in s.element_strategies)
    if kind == "OneOfStrategy":
        branches = list(s.original_strategies)
        return decode_strategy(branches[r.integer(0, len(branches) - 1)], r, "")
    if kind == "MappedStrategy":
        return s.pack(decode_strategy(s.mapped_strategy, r, ""))
    raise Undecodable(f"cannot decode argument {name!r} from bytes: {kind} (register a decoder "
                      f"in vmo.testing.decode.DECODERS[{name!r}])")


def _bundle_branches(strategy: Any) -> list[Any] | None:
    """The branches of a ``one_of`` that has a bundle among them, else None."""
    s = _unwrap(strategy)
    if type(s).__name__ != "OneOfStrategy":
        return None
    branches = list(s.original_strategies)
    return branches if any(isinstance(b, Bundle) for b in branches) else None


@attrs.frozen
class Ref:
    """A value taken from a bundle: the ``index``-th value it held when the step ran."""

    bundle: str
    index: int
    consume: bool = False


@attrs.define
class Call:
    """One step: a rule and its (decoded) arguments."""

    rule: str
    arguments: dict[str, Any]
    targets: tuple[str, ...] = ()


@attrs.define
class Program:
    machine: type
    calls: list[Call] = attrs.Factory(list)

    def text(self) -> str:
        """The program in hypothesis's format (``state = Machine()`` ... teardown, every
        invariant checked after each step), as `execute` runs it. Runs it to find out which
        steps return values; a failure is swallowed and the text ends at the failing step."""
        trace: list[str] = []
        try:
            execute(self, trace=trace)
        except Exception:  # noqa: BLE001 - the text is what we want
            if trace[-1:] != ["state.teardown()"]:
                trace.append("state.teardown()")
        return "\n".join(trace)


def _rules(machine: type) -> tuple[list[Any], list[Any], list[Any]]:
    st = cast(type[RuleBasedStateMachine], machine).setup_state()
    rules = sorted(st.rules, key=lambda r: r.function.__name__)
    inits = sorted(st.initializers, key=lambda r: r.function.__name__)
    return rules, inits, list(st.invariants)


def decode(data: bytes, machine: type | None = None, *, max_steps: int = 50) -> Program:
    """The program ``data`` encodes for ``machine`` (default `VmoStateMachine`).

    Bundles are tracked by how many values each holds, assuming every rule with a target adds
    one value (a rule that returns ``multiple()`` may add none; the executor then skips steps
    whose bundle index no longer exists).
    """
    if machine is None:
        from vmo.testing.machine import VmoStateMachine

        machine = VmoStateMachine
    rules, inits, _ = _rules(machine)
    r = ByteReader(data)
    sizes: dict[str, int] = {}
    prog = Program(machine)

    def decode_call(rule: Any) -> Call | None:
        args: dict[str, Any] = {}
        for name, strategy in rule.arguments.items():
            if isinstance(strategy, Bundle):
                n = sizes.get(strategy.name, 0)
                if n == 0:
                    return None
                consume = bool(getattr(strategy, "consume", False))
                args[name] = Ref(strategy.name, r.integer(0, n - 1), consume)
                if consume:
                    sizes[strategy.name] = n - 1
            elif (branches := _bundle_branches(strategy)) is not None:
                # ``one_of(bundle, ...)``: a branch whose bundle is empty cannot be drawn (as
                # in hypothesis); the bundle branch gives a reference, others a value.
                live = [b for b in branches
                        if not isinstance(b, Bundle) or sizes.get(b.name, 0) > 0]
                branch = live[r.integer(0, len(live) - 1)]
                if isinstance(branch, Bundle):
                    args[name] = Ref(branch.name, r.integer(0, sizes[branch.name] - 1))
                else:
                    args[name] = decode_strategy(branch, r, name)
            else:
                args[name] = decode_strategy(strategy, r, name)
        targets = tuple(rule.targets)
        for t in targets:
            sizes[t] = sizes.get(t, 0) + 1
        return Call(rule.function.__name__, args, targets)

    for rule in inits:
        call = decode_call(rule)
        if call is not None:
            prog.calls.append(call)
    while len(prog.calls) < max_steps and not r.exhausted:
        ready = [rule for rule in rules
                 if all(sizes.get(b.name, 0) > 0 for b in rule.bundles)]
        if not ready:
            break
        call = decode_call(ready[r.integer(0, len(ready) - 1)])
        if call is not None:
            prog.calls.append(call)
    return prog


def execute(program: Program, *, check_invariants: bool = True,
            trace: list[str] | None = None) -> None:
    """Run ``program`` on a fresh machine: each call, then every invariant; teardown at the end.

    Raises whatever a rule or an invariant raises (that is the finding). With ``trace``, the
    lines of the program as hypothesis would print it are appended as they run (so after a
    failure it ends with the failing step), then ``state.teardown()``.
    """
    machine: RuleBasedStateMachine = program.machine()
    _, _, invariants = _rules(program.machine)
    bundles: dict[str, list[_Named]] = {}
    counters: dict[str, int] = {}
    out = trace if trace is not None else []
    out.append(f"state = {program.machine.__name__}()")
    try:
        if check_invariants:
            _check(machine, invariants, out)
        for call in program.calls:
            args = _resolve(call, bundles)
            if args is None:
                continue  # a bundle shrank: an earlier rule returned multiple()
            text = ", ".join(f"{k}={v.name if isinstance(v, _Named) else repr(v)}"
                             for k, v in sorted(args.items()))
            values = {k: v.value if isinstance(v, _Named) else v for k, v in args.items()}
            line = f"state.{call.rule}({text})"
            out.append(line)
            result = getattr(machine, call.rule)(**values)
            if call.targets:
                results = result.values if isinstance(result, MultipleResults) else (result,)
                names = []
                for value in results:
                    t0 = call.targets[0]
                    name = f"{t0}_{counters.get(t0, 0)}"
                    counters[t0] = counters.get(t0, 0) + 1
                    names.append(name)
                    for t in call.targets:
                        bundles.setdefault(t, []).append(_Named(name, value))
                if names and isinstance(result, MultipleResults):
                    # Unpacked, as hypothesis prints it: replaying the text binds the values,
                    # not the MultipleResults that holds them.
                    out[-1] = f"({', '.join(names)},) = {line}"
                elif names:
                    out[-1] = f"{', '.join(names)} = {line}"
            if check_invariants:
                _check(machine, invariants, out)
    finally:
        out.append("state.teardown()")
        machine.teardown()


def _check(machine: Any, invariants: list[Any], out: list[str]) -> None:
    for inv in invariants:
        if all(pre(machine) for pre in inv.preconditions):
            out.append(f"state.{inv.function.__name__}()")
            inv.function(machine)


@attrs.define(eq=False)
class _Named:
    """A bundle value and the variable name the printed program gives it."""

    name: str
    value: Any


def _resolve(call: Call, bundles: dict[str, list[_Named]]) -> dict[str, Any] | None:
    """Arguments, with bundle references replaced by the `_Named` values they pick."""
    args: dict[str, Any] = {}
    for name, value in call.arguments.items():
        if isinstance(value, Ref):
            pool = bundles.get(value.bundle, [])
            if value.index >= len(pool):
                return None
            args[name] = pool[value.index]
        else:
            args[name] = value
    for name, value in call.arguments.items():
        if isinstance(value, Ref) and value.consume:
            pool = bundles[value.bundle]
            pool.remove(args[name])  # from that bundle only, as hypothesis does
    return args
