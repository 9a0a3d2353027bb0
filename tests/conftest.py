import os

from hypothesis import HealthCheck, settings

# "ci": minutes in CI. "fuzz": long campaigns (`HYPOTHESIS_PROFILE=fuzz`, or `vmo fuzz`).
settings.register_profile(
    "ci", max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz", max_examples=100_000_000, stateful_step_count=80, deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile("dev", max_examples=40, stateful_step_count=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
