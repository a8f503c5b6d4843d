"""Shared test set-up: Hypothesis profiles and a moto server on 127.0.0.1."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# `ci` (used by `make test`): a fixed example budget and no deadline, so the suite's runtime is predictable
# on a 2-core machine. `dev`: more examples for local digging (`HYPOTHESIS_PROFILE=dev pytest`).
settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
