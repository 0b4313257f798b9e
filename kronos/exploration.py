"""A short Hypothesis search over the job lifecycle, and a record of what it tried.

A passing property-based run says little unless one can see what it explored.
:func:`explore` runs a small :class:`~hypothesis.stateful.RuleBasedStateMachine`
(create, update and cancel CRON jobs, each under an optional fault point,
checking sync after every step) with Hypothesis's observability callbacks on,
and turns the observations into tables: one row per test case and one per
step, with the rule, the fault point and the time spent.

The machine here is deliberately minimal and built only on the public API;
the project's full state machines (issue 4) may replace it.
"""

from __future__ import annotations

import ast
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import psycopg
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from fault_injection import POINTS, FaultInjector, FaultyConnection
from kronos.checker import assert_in_sync
from kronos.jobs import Job, JobChange, JobSpec
from kronos.targets import Target, resolve_target
from kronos.workspace import add_endpoint, create_workspace, drop_workspace

__all__ = ["DEFAULT_FAULTS", "SCHEDULES", "Exploration", "explore", "machine_for"]

logger = logging.getLogger(__name__)

SCHEDULES = ("0 3 * * *", "*/15 * * * *", "30 6 * * 1-5", "5 4 * * *")
NO_FAULT = "none"

# The points a short search can afford: they fail fast, in this database, with
# a known outcome (see kronos.replay.UNREPLAYABLE for the others).
DEFAULT_FAULTS = (
    "schedule.before", "schedule.after", "unschedule.before", "unschedule.after",
    "commit.before", "connection.drop", "permission.denied",
)
_STEP_FOR = {"create_cron": "schedule", "update": "schedule", "cancel": "unschedule"}


def machine_for(
    dsn: str,
    target: str | Target,
    injector: FaultInjector,
    *,
    faults: Sequence[str] | None = None,
) -> type[RuleBasedStateMachine]:
    """A state machine class driving ``target`` on ``dsn`` under ``faults``.

    Each rule draws a fault point among those that can strike it (or none),
    arms it, runs the operation and disarms it; an operation that raises is an
    accepted outcome, and the ``in_sync`` invariant then holds the tables to
    agreement after every step. ``injector`` is shared by every test case,
    so arming costs no new connection.
    """
    resolved = resolve_target(target)
    chosen = list(DEFAULT_FAULTS) if faults is None else list(faults)

    def faults_for(operation: str) -> st.SearchStrategy[str]:
        usable = [p for p in chosen if operation in POINTS[p].strikes]
        return st.sampled_from([NO_FAULT, *usable])

    class JobLifecycle(RuleBasedStateMachine):
        """CRON jobs created, updated and cancelled under fault points."""

        jobs = Bundle("jobs")

        def __init__(self) -> None:
            super().__init__()
            self.observer = psycopg.connect(dsn, autocommit=True)
            self.conn: FaultyConnection = injector.connect()
            self.workspace = f"explore_{uuid.uuid4().hex[:10]}"
            create_workspace(self.observer, self.workspace)
            self.endpoint = add_endpoint(
                self.observer, self.workspace, "hook", "https://example.test/hook"
            ).id

        @rule(
            target=jobs,
            schedule=st.sampled_from(SCHEDULES),
            fault=faults_for("create_cron"),
        )
        def create_cron(self, schedule: str, fault: str) -> Any:
            spec = JobSpec.cron(self.endpoint, "explored", schedule)
            job = self._run(
                "create_cron", fault,
                lambda conn: resolved.create_job(conn, self.workspace, spec),
            )
            return multiple() if job is None else job.id

        @rule(
            target=jobs,
            job=consumes(jobs),
            schedule=st.sampled_from(SCHEDULES),
            fault=faults_for("update"),
        )
        def update(self, job: int, schedule: str, fault: str) -> int:
            change = JobChange(cron_expression=schedule)
            new = self._run(
                "update", fault,
                lambda conn: resolved.update_job(conn, self.workspace, job, change),
            )
            return job if new is None else new.id

        @rule(target=jobs, job=consumes(jobs), fault=faults_for("cancel"))
        def cancel(self, job: int, fault: str) -> Any:
            done = self._run(
                "cancel", fault,
                lambda conn: resolved.cancel_job(conn, self.workspace, job),
            )
            return job if done is None else multiple()

        @invariant()
        def in_sync(self) -> None:
            assert_in_sync(self.observer, [self.workspace])

        def teardown(self) -> None:
            try:
                drop_workspace(self.observer, self.workspace)
            except Exception:  # cleanup must not hide the test case's outcome
                logger.exception("could not drop %s", self.workspace)
            self.conn.close()
            self.observer.close()

        def _run(
            self,
            operation: str,
            fault: str,
            call: Callable[[psycopg.Connection], Job],
        ) -> Job | None:
            """The job the operation returned, or ``None`` if it raised."""
            if fault == NO_FAULT:
                return _attempt(call, self.conn)
            at = _STEP_FOR[operation] if POINTS[fault].steps else None
            armed = injector.arm(fault, at=at, workspace=self.workspace)
            try:
                # The armed fault hands out the connection it strikes.
                with armed.connect() as struck:
                    return _attempt(call, struck)
            finally:
                armed.disarm()

    JobLifecycle.__name__ = JobLifecycle.__qualname__ = "JobLifecycle"
    return JobLifecycle


def _attempt(
    call: Callable[[psycopg.Connection], Job], conn: psycopg.Connection
) -> Job | None:
    try:
        return call(conn)
    except psycopg.Error as exc:  # a failure is an outcome, not a bug
        logger.debug("operation failed: %s", exc)
        return None


@dataclass
class Exploration:
    """What one search tried: its test cases, their steps, and any failure."""

    target: str
    test_cases: pd.DataFrame
    steps: pd.DataFrame
    failure: str | None
    counterexample: str | None

    def rule_counts(self) -> pd.DataFrame:
        """How often each rule ran under each fault point (``none``: unarmed)."""
        if self.steps.empty:
            return pd.DataFrame()
        return pd.crosstab(self.steps["rule"], self.steps["fault"])

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
    shrink: bool = True,
) -> Exploration:
    """Run a short state-machine search and record every test case it ran.

    A failing search does not raise: its message and the program Hypothesis
    printed are kept in ``failure`` and ``counterexample`` (a program
    :func:`kronos.replay.parse_steps` reads).
    """
    observations: list[Any] = []
    resolved = resolve_target(target)

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    options = settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )

    failure: str | None = None
    with FaultInjector(dsn) as injector, _observing(observations.append):
        machine = machine_for(dsn, resolved, injector, faults=faults)
        hypothesis_seed(seed)(machine)
        try:
            run_state_machine_as_test(machine, settings=options)
        except Exception as exc:  # the verdict is data here
            failure = f"{type(exc).__name__}: {exc}"

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
    expose the experimental ``TESTCASE_CALLBACKS`` list.
    """

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self.callback = callback

    def __enter__(self) -> None:
        from hypothesis.internal import observability

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
    calls = _calls(program)

    per_rule: dict[str, int] = {}
    for name, _ in calls:
        per_rule[name] = per_rule.get(name, 0) + 1
    steps = [
        {
            "test_case": index,
            "step": number,
            "rule": name,
            "fault": fault,
            "seconds": timing.get(f"execute:rule:{name}", 0.0) / per_rule[name],
        }
        for number, (name, fault) in enumerate(calls, start=1)
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


def _calls(program: str) -> list[tuple[str, str]]:
    """``(rule, fault)`` of every rule call in a printed program, in order."""
    calls = []
    for line in program.splitlines():
        try:
            node = ast.parse(line.strip()).body[0]
        except (SyntaxError, IndexError):
            continue
        call = node.value if isinstance(node, (ast.Assign, ast.Expr)) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        if call.func.attr not in ("create_cron", "update", "cancel"):
            continue
        fault = NO_FAULT
        for keyword in call.keywords:
            if keyword.arg == "fault" and isinstance(keyword.value, ast.Constant):
                fault = str(keyword.value.value)
        calls.append((call.func.attr, fault))
    return calls
