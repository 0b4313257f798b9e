"""Replay a program the state machine printed, step by step, watching both tables.

A failing state-machine run prints its shrunk steps as a program
(``state = JobLifecycle()``, then one ``state.<rule>(...)`` per step).
:func:`replay` runs such a program through the same machine
(:meth:`kronos.statemachine.JobLifecycle.replay_steps`), so the steps mean
exactly what they meant when Hypothesis found them, and records after every
step what the operation did, the ``jobs`` rows, the ``cron.job`` rows and what
the checker found. The replay stops at the first step where the tables part
or an operation breaks its promise, as the machine does: after that the model
no longer says what the database should hold.

A program may also be written by hand: one ``state.<rule>(...)`` call per
line, with the machine's rules and arguments, naming results as the machine
does (``jobs_0 = state.create_cron(...)``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kronos.checker import COLUMNS, find_divergences
from kronos.errors import DivergenceError, KronosUsageError
from kronos.snapshot import Snapshot, take_snapshot
from kronos.statemachine import (
    JobRef,
    ProgramStep,
    ReplayedStep,
    make_state_machine,
    parse_program,
)
from kronos.targets import Target, resolve_target

__all__ = [
    "CRON_COLUMNS",
    "DEFAULT_PROGRAM",
    "JOB_COLUMNS",
    "Replay",
    "StepResult",
    "parse_steps",
    "replay",
    "snapshot_frames",
]

logger = logging.getLogger(__name__)

# The legacy control's counterexample as the machine printed it, shrunk, in a
# run over the pg_cron-path fault points: cron.schedule fails, legacy commits
# the ACTIVE job anyway and swallows the error, so the job never runs.
DEFAULT_PROGRAM = """\
state = JobLifecycle()
state.invariants_hold()
workspaces_0 = state.create_workspace(workspace='0')
state.invariants_hold()
endpoints_0 = state.add_endpoint(workspace=workspaces_0)
state.invariants_hold()
jobs_0 = state.create_cron(endpoint=endpoints_0, fault='schedule.before', \
name=workspaces_0, schedule='@yearly', timezone='UTC')
state.invariants_hold()
state.teardown()
"""

# The column order of Snapshot.jobs and Snapshot.cron_entries (kronos.snapshot).
JOB_COLUMNS = [
    "id", "endpoint_id", "name", "trigger", "status", "cron_expression",
    "timezone", "run_at", "idempotency_key", "payload", "version",
    "previous_version_id", "replaced_by_id",
]
CRON_COLUMNS = ["jobid", "jobname", "schedule", "command", "active"]


@dataclass(frozen=True)
class StepResult:
    """What one step did and how both tables looked right after it.

    ``problem`` is what the machine found wrong after the step (a divergence,
    or an operation that broke its promise), ``None`` when all held.
    """

    number: int
    step: ProgramStep
    outcome: str  # ok, failed, or unknown -> committed / aborted
    error: str | None
    sqlstate: str | None
    fired: bool | None  # None when no fault was armed
    job_id: int | None
    jobs: pd.DataFrame = field(repr=False, compare=False)
    cron_jobs: pd.DataFrame = field(repr=False, compare=False)
    divergences: pd.DataFrame = field(repr=False, compare=False)
    problem: str | None = None

    @property
    def diverged(self) -> bool:
        return not self.divergences.empty or self.problem is not None

    @property
    def explanation(self) -> str | None:
        """The first thing wrong after this step, as a sentence."""
        if not self.divergences.empty:
            return str(self.divergences["explanation"].iloc[0])
        if self.problem is not None:
            return " ".join(line.strip() for line in self.problem.splitlines())
        return None


@dataclass
class Replay:
    """Every step of one replay, with where the tables first parted."""

    target: str
    steps: list[StepResult]

    @property
    def first_divergence(self) -> StepResult | None:
        return next((result for result in self.steps if result.diverged), None)

    def explain(self) -> str:
        """One sentence: where the tables first parted and why."""
        first = self.first_divergence
        if first is None:
            return (
                f"jobs and cron.job agreed after every one of the {len(self.steps)} "
                f"steps on target {self.target}"
            )
        return (
            f"step {first.number} ({first.step.describe()}, {first.outcome}) on "
            f"target {self.target} left the tables apart: {first.explanation}"
        )

    def table(self) -> pd.DataFrame:
        """One row per step: what ran, its outcome, and what it left behind."""
        rows = [
            {
                "step": result.number,
                "operation": result.step.describe(),
                "outcome": result.outcome,
                "fault fired": result.fired,
                "error": result.error.splitlines()[0] if result.error else None,
                "jobs rows": len(result.jobs),
                "cron.job rows": len(result.cron_jobs),
                "divergences": len(result.divergences) or int(result.diverged),
                "explanation": result.explanation,
            }
            for result in self.steps
        ]
        return pd.DataFrame(rows)


def parse_steps(text: str) -> list[ProgramStep]:
    """The rule calls of a program, refusing text that holds none."""
    if not text.strip():
        raise KronosUsageError(
            "no steps given: paste the program Hypothesis printed "
            "(state = JobLifecycle(), then state.<rule>(...) lines)"
        )

    steps = parse_program(text)
    if not steps:
        raise KronosUsageError(
            "found no rule calls such as "
            "jobs_0 = state.create_cron(endpoint=endpoints_0, ...)"
        )
    return steps


def snapshot_frames(snapshot: Snapshot) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A snapshot's ``jobs`` rows and ``cron.job`` rows as two tables."""
    jobs = pd.DataFrame(list(snapshot.jobs), columns=JOB_COLUMNS)
    cron = pd.DataFrame(list(snapshot.cron_entries), columns=CRON_COLUMNS)
    jobs.insert(0, "workspace", snapshot.workspace)
    return jobs, cron


def replay(
    dsn: str,
    program: str | Sequence[ProgramStep],
    target: str | Target,
    *,
    server: Any = None,
) -> Replay:
    """Run ``program`` through the state machine and record both tables per step.

    ``server`` is the embedded server, needed only by programs that crash it
    (``crash_server``, ``fault='server.crash'``). The workspaces the program
    made are dropped at the end, as after every state-machine example.
    """
    resolved = resolve_target(target)
    text = program if isinstance(program, str) else "\n".join(
        step.line for step in program
    )
    parse_steps(text)

    Machine = make_state_machine(dsn, resolved, server=server)
    results: list[StepResult] = []
    try:
        # Closing the steps drops the program's workspaces, when it stops early too.
        with closing(Machine.replay_steps(text)) as steps:
            for done in steps:
                results.append(_record(done))
                if done.error is not None and not isinstance(
                    done.error, DivergenceError
                ):
                    raise done.error
                if results[-1].diverged:
                    break
    finally:
        Machine.close()

    logger.info("replayed %d steps on %s", len(results), resolved.name)
    return Replay(resolved.name, results)


def _record(done: ReplayedStep) -> StepResult:
    """The step's outcome and both tables, read before the machine cleans up."""
    state, outcome = done.state, done.outcome
    workspaces = list(state.model.workspaces)
    snapshots = [take_snapshot(state.observer, name) for name in workspaces]
    jobs, cron = _frames(snapshots)
    found = (
        find_divergences(state.observer, workspaces)
        if workspaces else pd.DataFrame(columns=COLUMNS)
    )

    kind, error = "ok", None
    if outcome is not None:
        kind = outcome.kind
        if outcome.resolved is not None:
            kind = f"{kind} -> {outcome.resolved}"
        error = outcome.error
    problem = None if done.error is None else str(done.error)

    logger.debug("step %d (%s): %s", done.number, done.step.describe(), kind)
    return StepResult(
        number=done.number,
        step=done.step,
        outcome=kind,
        error=None if error is None else f"{type(error).__name__}: {error}",
        sqlstate=getattr(error, "sqlstate", None),
        fired=None if done.step.fault is None or outcome is None else outcome.fired,
        job_id=done.result.id if isinstance(done.result, JobRef) else None,
        jobs=jobs,
        cron_jobs=cron,
        divergences=found,
        problem=problem,
    )


def _frames(snapshots: Iterable[Snapshot]) -> tuple[pd.DataFrame, pd.DataFrame]:
    pairs = [snapshot_frames(snapshot) for snapshot in snapshots]
    if not pairs:
        return (
            pd.DataFrame(columns=["workspace", *JOB_COLUMNS]),
            pd.DataFrame(columns=CRON_COLUMNS),
        )
    jobs = pd.concat([pair[0] for pair in pairs], ignore_index=True)
    cron = pd.concat([pair[1] for pair in pairs], ignore_index=True)
    return jobs, cron
