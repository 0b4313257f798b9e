"""A short run of the state machine, and a record of what it tried.

A passing property-based run says little unless one can see what it explored.
:func:`explore` runs the project's state machine
(:func:`kronos.statemachine.make_state_machine`, the one the test suite runs)
with Hypothesis's observability callbacks on, and turns the observations into
tables: one row per test case and one per step, with the rule, the fault
point and the time spent. The machine is not copied here; this module only
watches it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.stateful import run_state_machine_as_test

from kronos.statemachine import make_state_machine, parse_program
from kronos.targets import Target, resolve_target

__all__ = ["NO_FAULT", "Exploration", "explore"]

logger = logging.getLogger(__name__)

# The fault column of a step that armed nothing, or whose rule takes no fault.
NO_FAULT = "none"


@dataclass
class Exploration:
    """What one search tried: its test cases, their steps, and any failure.

    ``rules`` and ``fault_points`` are what the machine was given, so a reader
    can see what the search never reached.
    """

    target: str
    rules: tuple[str, ...]
    fault_points: tuple[str, ...]
    test_cases: pd.DataFrame
    steps: pd.DataFrame
    failure: str | None
    counterexample: str | None

    def rule_counts(self) -> pd.DataFrame:
        """How often each rule ran under each fault point (``none``: unarmed)."""
        if self.steps.empty:
            return pd.DataFrame()
        return pd.crosstab(self.steps["rule"], self.steps["fault"])

    def unexercised(self) -> tuple[list[str], list[str]]:
        """The rules and the fault points the search never ran."""
        counts = self.rule_counts()
        return (
            [rule for rule in self.rules if rule not in counts.index],
            [point for point in self.fault_points if point not in counts.columns],
        )

    def step_durations(self) -> pd.DataFrame:
        """Seconds per step, by rule: count, mean, median and slowest."""
        grouped = self.steps.groupby("rule")["seconds"]
        return grouped.agg(["count", "mean", "median", "max"])


def explore(
    dsn: str,
    target: str | Target = "atomic",
    *,
    max_examples: int = 20,
    steps: int = 6,
    seed: int = 0,
    faults: Sequence[str] | None = None,
    server: Any = None,
    crash: bool = False,
    shrink: bool = True,
) -> Exploration:
    """Run a short state-machine search and record every test case it ran.

    ``faults``, ``server`` and ``crash`` go to
    :func:`~kronos.statemachine.make_state_machine` (``None``: every
    in-process fault point). A failing search does not raise: its message and
    the program Hypothesis printed are kept in ``failure`` and
    ``counterexample``, a program :func:`kronos.replay.replay` runs.
    """
    resolved = resolve_target(target)
    Machine = make_state_machine(
        dsn, resolved, fault_points=faults, server=server, crash=crash
    )
    hypothesis_seed(seed)(Machine)

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    options = settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        phases=phases,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )

    observations: list[Any] = []
    failure: str | None = None
    try:
        with _observing(observations.append):
            run_state_machine_as_test(Machine, settings=options)
    except AssertionError as exc:  # a divergence found is the verdict, as data
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        Machine.close()

    cases = [
        _case(number, obs)
        for number, obs in enumerate(
            (obs for obs in observations if _get(obs, "type") == "test_case"),
            start=1,
        )
    ]
    failed = [case for case in cases if case["status"] == "failed"]

    logger.info("explored %d test cases on %s", len(cases), resolved.name)
    return Exploration(
        target=resolved.name,
        rules=tuple(Machine.rule_names()),
        fault_points=tuple(Machine.fault_names),
        test_cases=pd.DataFrame(
            [{k: v for k, v in case.items() if k != "steps"} for case in cases]
        ),
        steps=pd.DataFrame(
            [step for case in cases for step in case["steps"]],
            columns=["test_case", "step", "rule", "fault", "seconds"],
        ),
        failure=failure,
        counterexample=failed[-1]["program"] if failure and failed else None,
    )


class _observing:
    """Deliver Hypothesis observations to ``callback`` while in the block.

    Hypothesis 6.13x and later have ``add_observability_callback``; older ones
    expose the experimental ``TESTCASE_CALLBACKS`` list. With a callback on,
    Hypothesis also traces line coverage of every test case, which slows a
    run over the database several times over (shrinking most) and which
    nothing here reads, so it is switched off for the block.
    """

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self.callback = callback
        self.coverage: bool | None = None

    def __enter__(self) -> None:
        from hypothesis.internal import observability

        self.coverage = getattr(observability, _COVERAGE, None)
        if self.coverage is not None:
            setattr(observability, _COVERAGE, False)
        adder = getattr(observability, "add_observability_callback", None)
        if adder is not None:
            adder(self.callback)
        else:  # pragma: no cover - older Hypothesis
            observability.TESTCASE_CALLBACKS.append(self.callback)

    def __exit__(self, *exc_info: object) -> None:
        from hypothesis.internal import observability

        remover = getattr(observability, "remove_observability_callback", None)
        if remover is not None:
            remover(self.callback)
        else:  # pragma: no cover - older Hypothesis
            observability.TESTCASE_CALLBACKS.remove(self.callback)
        if self.coverage is not None:
            setattr(observability, _COVERAGE, self.coverage)


# The switch behind HYPOTHESIS_EXPERIMENTAL_OBSERVABILITY_NOCOVER, which is
# read only once, at import.
_COVERAGE = "OBSERVABILITY_COLLECT_COVERAGE"


def _get(observation: Any, name: str) -> Any:
    if isinstance(observation, dict):
        return observation.get(name)
    return getattr(observation, name, None)


def _case(index: int, observation: Any) -> dict[str, Any]:
    """One test case: its status, its program and its steps with timings.

    Hypothesis times each rule per test case (``execute:rule:<name>``), not
    each call, so a step's ``seconds`` is its rule's total in that test case
    divided by the number of calls.
    """
    program = str(_get(observation, "representation") or "")
    timing = dict(_get(observation, "timing") or {})
    calls = parse_program(program)

    per_rule: dict[str, int] = {}
    for call in calls:
        per_rule[call.rule] = per_rule.get(call.rule, 0) + 1
    steps = [
        {
            "test_case": index,
            "step": number,
            "rule": call.rule,
            "fault": call.fault or NO_FAULT,
            "seconds": timing.get(f"execute:rule:{call.rule}", 0.0)
            / per_rule[call.rule],
        }
        for number, call in enumerate(calls, start=1)
    ]
    return {
        "test_case": index,
        "status": _get(observation, "status"),
        "how_generated": _get(observation, "how_generated"),
        "steps": steps,
        "n_steps": len(steps),
        "seconds": sum(v for k, v in timing.items() if k.startswith("execute:")),
        "program": program,
    }
