"""The state machines as HypoFuzz targets: ``hypothesis fuzz -- fuzz/test_targets.py``.

HypoFuzz (``pip install hypofuzz``) runs hypothesis tests for as long as you let it, adapting
which test gets the time to the coverage each one is still gaining, with a live dashboard. Each
state machine of `vmo.testing` is one target here (its ``TestCase``):

    hypothesis fuzz -n 2 -- fuzz/test_targets.py               # every machine, 2 processes
    hypothesis fuzz -n 1 -- fuzz/test_targets.py -k Core       # the core machine only
    hypothesis fuzz --dashboard-only                           # just the dashboard

The example database is the settings profile's: ``.hypothesis/vmo-fuzz`` by default, or
``VMO_FUZZ_DB`` (a directory or ``redis://HOST:PORT/DB``, layered with the local directory
as `vmo fuzz --db` does), so that a fleet of machines fuzzing these targets shares its finds
with each other and with ``vmo fuzz``. See docs/fuzzing.md.

This module is not part of the test suite (pytest's ``testpaths`` is ``tests/``); pytest runs
it as any test module if asked (each target then runs the profile's ``max_examples``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from vmo.testing.databases import DEFAULT_LOCAL, open_database
from vmo.testing.machine import VmoStateMachine
from vmo.testing.pager_cow import PagerCowMachine
from vmo.testing.pager_machine import PagerStateMachine
from vmo.testing.swap_machine import SwapStateMachine

_DATABASE = open_database(os.environ.get("VMO_FUZZ_DB") or DEFAULT_LOCAL,
                          local=os.environ.get("VMO_FUZZ_LOCAL_DB", DEFAULT_LOCAL))

settings.register_profile(
    "vmo-hypofuzz", database=_DATABASE, deadline=None, stateful_step_count=50,
    max_examples=int(os.environ.get("VMO_FUZZ_MAX_EXAMPLES", "20")),
    # Under CI=true hypothesis's default profile derandomizes, and HypoFuzz refuses a
    # derandomized test: fuzzing needs fresh random programs wherever it runs.
    derandomize=False,
    # HypoFuzz refuses tests that suppress the nested_given check; none of ours nests.
    suppress_health_check=[h for h in HealthCheck if h.name != "nested_given"])
# HypoFuzz fuzzes only tests whose database is the default profile's: make this one the
# default.
settings.load_profile("vmo-hypofuzz")
_SETTINGS = settings.get_profile("vmo-hypofuzz")


def _target(machine: type) -> type:
    case = machine.TestCase
    case.settings = _SETTINGS
    return case


TestCoreMachine = _target(VmoStateMachine)
TestPagerMachine = _target(PagerStateMachine)
TestPagerCowMachine = _target(PagerCowMachine)
TestSwapMachine = _target(SwapStateMachine)
