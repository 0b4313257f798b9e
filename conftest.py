"""Fixtures and Hypothesis profiles for this repository's tests.

The Kronos fixtures themselves come from the package's pytest plugin
(``kronos.pytest_plugin``, loaded through its entry point), the same plugin
other projects use.

Hypothesis profiles, chosen with ``--hypothesis-profile NAME``:

* ``quick`` (the local default): a few short runs, so ``pytest`` stays fast;
* ``ci`` (the default when the ``CI`` environment variable is set):
  derandomised, so every CI run tries the same examples, and no deadline,
  because a shared runner's timing says nothing about the code;
* ``nightly``: a long search, many examples of long sequences.

``--hypothesis-seed N`` reproduces a ``quick`` or ``nightly`` run (a ``ci``
run is derandomised and needs no seed). Failing examples are kept in the
example database under ``.hypothesis/`` and tried first on the next run,
except in ``ci``, where derandomising turns the database off.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, Verbosity, settings

# The state machines spend their time in PostgreSQL, not in data generation,
# so the health checks about slow or filtered generation say nothing useful.
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.filter_too_much]

# The explain phase reruns a failing sequence many times to annotate it; on a
# state machine that costs more than the search itself and adds little to
# the printed steps, so only the nightly search pays for it.
_NO_EXPLAIN = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

settings.register_profile(
    "quick",
    max_examples=10,
    stateful_step_count=10,
    deadline=None,
    phases=_NO_EXPLAIN,
    suppress_health_check=_SLOW_IS_FINE,
)
settings.register_profile(
    "ci",
    max_examples=50,
    stateful_step_count=15,
    derandomize=True,
    deadline=None,
    print_blob=True,
    phases=_NO_EXPLAIN,
    suppress_health_check=_SLOW_IS_FINE,
)
settings.register_profile(
    "nightly",
    max_examples=1000,
    stateful_step_count=40,
    deadline=None,
    verbosity=Verbosity.normal,
    suppress_health_check=_SLOW_IS_FINE,
)

# --hypothesis-profile, read by Hypothesis's own pytest plugin after this
# file is imported, overrides the choice made here.
settings.load_profile("ci" if os.environ.get("CI") else "quick")
