"""How fast the state machine runs, and how long the positive control takes to catch.

Prints two figures and asserts nothing, because timings depend on the machine:

* steps per second of the machine against ``atomic`` (rules run, invariants
  checked after each), with faults;
* seconds for Hypothesis to find a counterexample on ``legacy``, and to shrink
  it, with the length of the shrunk sequence.

Run it with ``.venv/bin/python benchmarks/bench_statemachine.py``; it starts an
embedded server unless ``--dsn`` (or ``KRONOS_DSN``) names one.
"""

from __future__ import annotations

import argparse
import os
import re
import time

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from kronos.backends import resolve_backend
from kronos.statemachine import JobLifecycle, make_state_machine

_RULE_CALL = re.compile(r"^\s*(?:\S+ = )?state\.(?!invariants_hold|teardown)\w+\(")
_PGCRON_POINTS = ["schedule.before", "schedule.after", "unschedule.before",
                  "unschedule.after"]


def _counting(Machine: type[JobLifecycle]) -> dict[str, int]:
    """Count examples and steps on ``Machine``.

    Hypothesis checks the invariants once before the first step and once
    after each, so steps are those checks minus one per example.
    """
    counts = {"examples": 0, "steps": 0}
    teardown, check = Machine.teardown, Machine.check_invariants

    def counted_teardown(self: JobLifecycle) -> None:
        counts["examples"] += 1
        counts["steps"] -= 1
        teardown(self)

    def counted_check(self: JobLifecycle, *args: object) -> None:
        counts["steps"] += 1
        check(self, *args)

    Machine.teardown = counted_teardown  # type: ignore[method-assign]
    Machine.check_invariants = counted_check  # type: ignore[method-assign]
    return counts


def steps_per_second(dsn: str, examples: int, steps: int) -> None:
    Machine = make_state_machine(dsn, "atomic")
    counts = _counting(Machine)
    started = time.perf_counter()
    try:
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=examples, stateful_step_count=steps, deadline=None,
                database=None, suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        Machine.close()
    elapsed = time.perf_counter() - started
    print(
        f"atomic: {counts['steps']} steps in {counts['examples']} examples, "
        f"{elapsed:.1f} s: {counts['steps'] / elapsed:.1f} steps/s"
    )


def positive_control(dsn: str, seed: int | None) -> None:
    Machine = make_state_machine(dsn, "legacy", fault_points=_PGCRON_POINTS)
    counts = _counting(Machine)
    found_at: list[float] = []
    check, judge = Machine.check_invariants, Machine._judge

    def noting(method):  # type: ignore[no-untyped-def]
        def wrapper(self: JobLifecycle, *args: object) -> object:
            try:
                return method(self, *args)
            except AssertionError:
                if not found_at:
                    found_at.append(time.perf_counter())
                raise

        return wrapper

    Machine.check_invariants = noting(check)  # type: ignore[method-assign]
    Machine._judge = noting(judge)  # type: ignore[method-assign]
    options = dict(
        max_examples=500, stateful_step_count=8, deadline=None, database=None,
        report_multiple_bugs=False, phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    if seed is not None:
        Machine._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]

    started = time.perf_counter()
    try:
        run_state_machine_as_test(Machine, settings=settings(**options))
    except AssertionError as failure:
        done = time.perf_counter()
        program = "\n".join(getattr(failure, "__notes__", []))
    else:
        print("legacy: NOT CAUGHT - the harness is broken")
        return
    finally:
        Machine.close()

    found = (found_at[0] if found_at else done) - started
    steps = [line.strip() for line in program.splitlines() if _RULE_CALL.match(line)]
    print(
        f"legacy: found in {found:.1f} s, shrunk in {done - started - found:.1f} s "
        f"({counts['examples']} examples run) to {len(steps)} steps:"
    )
    for step in steps:
        print(f"    {step}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("KRONOS_DSN"))
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()

    with resolve_backend(None, args.dsn) as backend:
        print(f"backend: {backend.describe()}")
        steps_per_second(backend.dsn, args.examples, args.steps)
        positive_control(backend.dsn, args.seed)


if __name__ == "__main__":
    main()
