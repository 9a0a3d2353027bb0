"""A time budget for hypothesis's generate phase, so that a long run of the test suite's
state machines (``HYPOTHESIS_PROFILE=fuzz``) ends by itself, and passes when nothing failed.

Hypothesis counts examples, not seconds: the fuzz profile's ``max_examples`` is effectively
unbounded, and pytest-timeout would cut such a test off and report it as failed. Within
`generation_deadline` hypothesis stops generating new programs once the time is up; a
program that failed before then is still shrunk and reported as usual.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from typing import Any

from hypothesis.internal.conjecture import engine as _engine


@contextlib.contextmanager
def generation_deadline(seconds: float) -> Iterator[None]:
    """Within this context, hypothesis generates new examples for ``seconds`` from the start
    of each test's generate phase, then stops (replaying the example database before it, the
    shrink phase and the final replay after it are not limited).

    Hypothesis has no public setting for this: the generate loop asks the engine's
    ``should_generate_more``, and every example goes through its ``test_function``; both are
    wrapped here and restored on exit. A hypothesis without them raises `RuntimeError` at
    once rather than running unbounded.
    """
    if not seconds > 0:
        raise ValueError(f"generation_deadline: seconds must be positive, got {seconds!r}")
    runner = _engine.ConjectureRunner
    original = getattr(runner, "should_generate_more", None)
    original_test = getattr(runner, "test_function", None)
    if original is None or original_test is None:
        raise RuntimeError("this hypothesis has no ConjectureRunner.should_generate_more or "
                           "test_function: a time budget cannot be applied")
    deadlines: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def should_generate_more(self: Any) -> bool:
        # The clock starts at the generate phase's first question (which hypothesis asserts
        # is yes), so a long replay of the example database does not eat the budget.
        deadline = deadlines.setdefault(self, time.monotonic() + seconds)
        return bool(original(self)) and time.monotonic() < deadline

    def test_function(self: Any, data: Any) -> Any:
        result = original_test(self, data)
        # The target phase (machines that call target()) runs inside generation with a
        # budget in examples, not questions to should_generate_more: with the fuzz
        # profile's example count it would never end. Once the time is up and nothing
        # failed, end the run the way hypothesis ends one that reached max_examples.
        deadline = deadlines.get(self)
        if (deadline is not None and time.monotonic() >= deadline
                and not getattr(self, "interesting_test_cases", None)):
            self.exit_with(_engine.ExitReason.finished)
        return result

    runner.should_generate_more = should_generate_more  # type: ignore[method-assign]
    runner.test_function = test_function  # type: ignore[method-assign]
    try:
        yield
    finally:
        runner.should_generate_more = original  # type: ignore[method-assign]
        runner.test_function = original_test  # type: ignore[method-assign]
