"""The fault matrix: every operation under every fault point, for each target.

Each cell runs on a workspace of its own: set up the job the operation needs,
take a snapshot, arm the fault, run the operation on a connection the fault
strikes, disarm, resolve an unknown outcome from the server, then check sync
(the checker) and atomicity: a failed or aborted operation must leave the
snapshot unchanged, an ok or committed one must be fully applied. A cell
records the outcome, whether and where the fault fired and what was found, so
the table tells the whole story.

``server.crash`` stops and restarts the server, which only the embedded server
allows: without ``server=`` its cells are shown as refused, with the reason.
Known shortcoming: ``extension.missing`` strikes only ``create_cron``; an
update or cancel in a database without pg_cron would need a CRON job created
while the extension was there, that is a ``DROP EXTENSION pg_cron``, which
would wipe every entry of the database under test.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import psycopg
from psycopg import sql

from fault_injection import OPERATIONS, POINTS, ArmedFault, FaultInjector, get_point
from kronos.checker import COLUMNS, find_divergences
from kronos.errors import EnvironmentProblem, KronosUsageError
from kronos.jobs import Job, JobChange, JobSpec
from kronos.outcome import Outcome, resolve_outcome, run_operation
from kronos.registration import cron_job_name
from kronos.snapshot import Snapshot, take_snapshot
from kronos.targets import Target, is_positive_control
from kronos.workspace import add_endpoint, create_workspace, drop_workspace

__all__ = ["NO_FAULT", "STEP_FOR", "Cell", "MatrixResult", "run_matrix"]

logger = logging.getLogger(__name__)

NO_FAULT = "none"

# Where a point with a choice of step strikes each operation: the first
# pg_cron call of create and cancel, the second (the schedule of the new
# version, after the old one was unscheduled) of an update.
STEP_FOR = {"create_cron": "schedule", "update": "schedule", "cancel": "unschedule"}

_UPDATED_EXPRESSION = "30 4 * * 1-5"


@dataclass(frozen=True)
class Cell:
    """What one operation did under one fault point, for one target."""

    operation: str
    fault: str
    target: str
    outcome: str  # "ok", "failed", "unknown", or "refused" (not run, see error)
    error: str | None
    sqlstate: str | None
    fired: bool | None  # None when no fault was armed
    divergences: pd.DataFrame = field(repr=False, compare=False)
    atomicity: tuple[str, ...] = ()
    before: Snapshot | None = field(default=None, repr=False, compare=False)
    after: Snapshot | None = field(default=None, repr=False, compare=False)
    resolved: str | None = None  # for "unknown": committed or aborted
    where: str | None = None  # where the fault struck
    result: Outcome | None = field(default=None, repr=False, compare=False)

    @property
    def diverged(self) -> bool:
        return not self.divergences.empty or bool(self.atomicity)

    @property
    def refused(self) -> bool:
        return self.outcome == "refused"

    @property
    def harness_problem(self) -> str | None:
        """Why this cell proves nothing, if it does not."""
        if self.fired is False:
            return f"fault {self.fault} was armed but never fired"
        return None

    def summary(self) -> str:
        """A short text for one cell of the printed table."""
        if self.refused:
            return f"REFUSED: {self.error}"
        outcome = (
            self.outcome
            if self.sqlstate is None
            else (f"{self.outcome} ({self.sqlstate})")
        )
        if self.outcome == "unknown":
            outcome += f" -> {self.resolved or 'unresolved'}"
        if self.harness_problem:
            return f"{outcome}, NOT FIRED"
        if not self.diverged:
            return f"{outcome}, in sync"
        kinds = sorted(set(self.divergences["kind"]))
        if self.atomicity:
            kinds.append("partial write")
        return f"{outcome}, DIVERGED: {', '.join(kinds)}"


@dataclass
class MatrixResult:
    """All cells of one run, with each target's verdict."""

    targets: list[str]
    cells: list[Cell]
    positive_controls: set[str]

    def cell(self, operation: str, fault: str, target: str) -> Cell:
        for cell in self.cells:
            if (cell.operation, cell.fault, cell.target) == (operation, fault, target):
                return cell
        raise KeyError((operation, fault, target))

    def table(self) -> pd.DataFrame:
        """One row per operation and fault, one column per target."""
        rows = []
        for (operation, fault), cells in itertools.groupby(
            self.cells, key=lambda c: (c.operation, c.fault)
        ):
            row = {"operation": operation, "fault": fault}
            row.update({cell.target: cell.summary() for cell in cells})
            rows.append(row)
        return pd.DataFrame(rows, columns=["operation", "fault", *self.targets])

    def verdicts(self) -> dict[str, tuple[bool, str]]:
        """For each target: did it behave as declared, and why."""
        verdicts = {}
        for target in self.targets:
            cells = [c for c in self.cells if c.target == target and not c.refused]
            refused = len([c for c in self.cells if c.target == target and c.refused])
            note = f" ({refused} cell(s) refused, see the table)" if refused else ""
            broken = [c for c in cells if c.harness_problem]
            diverged = [c for c in cells if c.diverged]
            if broken:
                verdicts[target] = (
                    False,
                    f"{len(broken)} cell(s) prove nothing: {broken[0].harness_problem}",
                )
            elif target in self.positive_controls:
                verdicts[target] = (
                    bool(diverged),
                    f"positive control diverged in {len(diverged)} of {len(cells)} "
                    "cells, as expected" + note
                    if diverged
                    else "positive control never diverged: the harness is broken",
                )
            else:
                verdicts[target] = (
                    not diverged,
                    f"never diverged in {len(cells)} cells" + note
                    if not diverged
                    else f"DIVERGED in {len(diverged)} of {len(cells)} cells",
                )
        return verdicts

    @property
    def ok(self) -> bool:
        return all(passed for passed, _ in self.verdicts().values())


def check_choices(faults: Sequence[str], operations: Sequence[str]) -> None:
    """Refuse unknown fault points and operations, naming the known ones."""
    for fault in faults:
        if fault != NO_FAULT:
            get_point(fault)
    unknown = sorted(set(operations) - set(OPERATIONS))
    if unknown:
        raise KronosUsageError(
            f"unknown operation(s) {', '.join(unknown)}; use {', '.join(OPERATIONS)}"
        )


def applicable_faults(operation: str, faults: Sequence[str]) -> list[str]:
    """The faults among ``faults`` that can strike ``operation``."""
    return [
        fault
        for fault in faults
        if fault == NO_FAULT or operation in get_point(fault).strikes
    ]


def run_matrix(
    dsn: str,
    targets: Sequence[Target],
    *,
    faults: Sequence[str] | None = None,
    operations: Sequence[str] = OPERATIONS,
    server: object | None = None,
    seed: int | None = None,
    keep_workspaces: bool = False,
    progress: Callable[[Cell], None] | None = None,
) -> MatrixResult:
    """Run every applicable (operation, fault) pair through every target.

    ``server`` is the :class:`~kronos.server.EmbeddedServer` behind ``dsn``;
    without it the ``server.crash`` cells are refused (shown, not dropped).
    ``seed`` makes the random choices of ``commit.ack_lost`` repeatable.
    """
    chosen = [NO_FAULT, *POINTS] if faults is None else list(faults)
    check_choices(chosen, operations)

    run_id = uuid.uuid4().hex[:6]
    cells = []
    counter = itertools.count(1)
    with FaultInjector(dsn, server=server, seed=seed) as injector:
        for operation in operations:
            for fault in applicable_faults(operation, chosen):
                for target in targets:
                    workspace = f"matrix_{run_id}_{next(counter)}"
                    cell = _run_cell(
                        injector, target, operation, fault, workspace, keep_workspaces
                    )
                    cells.append(cell)
                    if progress:
                        progress(cell)

    return MatrixResult(
        targets=[t.name for t in targets],
        cells=cells,
        positive_controls={t.name for t in targets if is_positive_control(t)},
    )


def _run_cell(
    injector: FaultInjector,
    target: Target,
    operation: str,
    fault: str,
    workspace: str,
    keep_workspace: bool,
) -> Cell:
    point = None if fault == NO_FAULT else get_point(fault)
    if point is not None and point.needs_server:
        try:
            injector.require_server(fault)
        except EnvironmentProblem as exc:
            return _refused(operation, fault, target, str(exc))
    try:
        database = injector.database_for(fault)
    except EnvironmentProblem as exc:
        return _refused(operation, fault, target, str(exc))

    with psycopg.connect(database, autocommit=True) as observer:
        create_workspace(observer, workspace)
        endpoint = add_endpoint(observer, workspace, "hook", "https://example.test/h")
    spec = JobSpec.cron(endpoint.id, "nightly report", "0 3 * * *", "Europe/Paris")
    try:
        return _run_in_workspace(
            injector, database, target, operation, fault, workspace, spec
        )
    finally:
        if not keep_workspace:
            _drop(database, workspace)


def _run_in_workspace(
    injector: FaultInjector,
    database: str,
    target: Target,
    operation: str,
    fault: str,
    workspace: str,
    spec: JobSpec,
) -> Cell:
    existing: Job | None = None
    if operation != "create_cron":
        with injector.connect(database) as setup:
            existing = target.create_job(setup, workspace, spec)
    with psycopg.connect(database, autocommit=True) as observer:
        before = take_snapshot(observer, workspace)

    armed: ArmedFault | None = None
    if fault != NO_FAULT:
        at = STEP_FOR[operation] if get_point(fault).steps else None
        armed = injector.arm(fault, at=at, workspace=workspace)
    try:
        with armed.connect() if armed else injector.connect(database) as conn:
            run = _operation(target, conn, workspace, operation, spec, existing)
            outcome = run_operation(conn, run)
    finally:
        if armed is not None:
            armed.disarm()
    outcome = resolve_outcome(outcome, database)

    # A fresh observer: a crash in the cell ended every older connection.
    with psycopg.connect(database, autocommit=True) as observer:
        after = take_snapshot(observer, workspace)
        divergences = _divergences(observer, workspace)
    atomicity = _atomicity(outcome, operation, before, after, existing)

    cell = Cell(
        operation=operation,
        fault=fault,
        target=target.name,
        outcome=outcome.status,
        error=outcome.error,
        sqlstate=outcome.sqlstate,
        fired=None if armed is None else armed.fired,
        divergences=divergences,
        atomicity=tuple(atomicity),
        before=before,
        after=after,
        resolved=outcome.resolved,
        where=None if armed is None else armed.where,
        result=outcome,
    )
    logger.info("%s / %s / %s: %s", operation, fault, target.name, cell.summary())
    return cell


def _refused(operation: str, fault: str, target: Target, why: str) -> Cell:
    logger.info("%s / %s / %s: refused: %s", operation, fault, target.name, why)
    return Cell(
        operation=operation,
        fault=fault,
        target=target.name,
        outcome="refused",
        error=why,
        sqlstate=None,
        fired=None,
        divergences=pd.DataFrame(columns=COLUMNS),
    )


def _divergences(observer: psycopg.Connection, workspace: str) -> pd.DataFrame:
    """The checker's findings; in a database without pg_cron, its equivalent.

    The checker refuses a database without pg_cron (nothing there can be in
    sync). There every ACTIVE CRON job is a missing schedule, by definition.
    """
    installed = observer.execute(
        "SELECT to_regclass('cron.job') IS NOT NULL"
    ).fetchone()[0]
    if installed:
        return find_divergences(observer, [workspace])

    rows = observer.execute(
        sql.SQL(
            "SELECT id, cron_expression FROM {} WHERE trigger = 'CRON'"
            " AND status = 'ACTIVE' ORDER BY id"
        ).format(sql.Identifier(workspace, "jobs"))
    ).fetchall()
    found = [
        {
            "kind": "missing schedule",
            "workspace": workspace,
            "job_id": job_id,
            "job_status": "ACTIVE",
            "jobname": cron_job_name(workspace, job_id),
            "cron_jobid": None,
            "expected": expression,
            "actual": None,
            "explanation": (
                f"job {job_id} in workspace {workspace!r} is ACTIVE on "
                f"{expression!r} but its database has no pg_cron, so it never runs"
            ),
        }
        for job_id, expression in rows
    ]
    return pd.DataFrame(found, columns=COLUMNS)


def _atomicity(
    outcome: Outcome,
    operation: str,
    before: Snapshot,
    after: Snapshot,
    existing: Job | None,
) -> list[str]:
    """What contradicts the outcome: all of it applied, or none of it.

    An unresolved unknown outcome allows either whole state, never a mix.
    """
    unchanged = before.differences(after)
    applied = _effect_problems(operation, before, after, existing)
    if outcome.applied is False:
        return unchanged
    if outcome.applied is True:
        return applied
    if not unchanged or not applied:
        return []
    return ["outcome unknown, and the state is neither before nor after:", *applied]


def _effect_problems(
    operation: str, before: Snapshot, after: Snapshot, existing: Job | None
) -> list[str]:
    """Why ``after`` is not ``before`` with the whole operation applied."""
    jobs = {row[0]: row for row in after.jobs}
    old_ids = {row[0] for row in before.jobs}
    entries = {row[1]: row for row in after.cron_entries}
    workspace = after.workspace
    problems = []

    def entry(job_id: int, schedule: str | None) -> None:
        name = cron_job_name(workspace, job_id)
        found = entries.get(name)
        if schedule is None and found is not None:
            problems.append(f"pg_cron entry {name} is still there")
        elif schedule is not None and (found is None or found[2] != schedule):
            problems.append(f"pg_cron entry {name} on {schedule!r} is missing")

    new = [row for job_id, row in jobs.items() if job_id not in old_ids]
    if operation == "create_cron":
        if len(new) != 1 or new[0][4] != "ACTIVE":
            return [f"expected one new ACTIVE job, found {len(new)} new job(s)"]
        entry(new[0][0], new[0][5])
    elif operation == "update":
        assert existing is not None
        old = jobs.get(existing.id)
        if len(new) != 1 or new[0][4] != "ACTIVE" or new[0][5] != _UPDATED_EXPRESSION:
            return [f"expected one new ACTIVE version on {_UPDATED_EXPRESSION!r}"]
        if old is None or old[4] != "RETIRED" or old[12] != new[0][0]:
            problems.append(f"job {existing.id} is not RETIRED and replaced")
        entry(existing.id, None)
        entry(new[0][0], _UPDATED_EXPRESSION)
    else:
        assert existing is not None
        old = jobs.get(existing.id)
        if new or old is None or old[4] != "RETIRED":
            problems.append(f"job {existing.id} is not RETIRED")
        entry(existing.id, None)
    return problems


def _drop(database: str, workspace: str) -> None:
    """Drop the cell's workspace, also in a database without pg_cron."""
    with psycopg.connect(database, autocommit=True) as conn:
        installed = conn.execute(
            "SELECT to_regclass('cron.job') IS NOT NULL"
        ).fetchone()[0]
        if installed:
            drop_workspace(conn, workspace)
            return
        with conn.transaction():
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(workspace)
                )
            )
            conn.execute(
                "DELETE FROM public.workspaces WHERE schema_name = %s", [workspace]
            )


def _operation(
    target: Target,
    conn: psycopg.Connection,
    workspace: str,
    operation: str,
    spec: JobSpec,
    existing: Job | None,
) -> Callable[[], Job]:
    if operation == "create_cron":
        return lambda: target.create_job(conn, workspace, spec)
    assert existing is not None
    if operation == "update":
        change = JobChange(cron_expression=_UPDATED_EXPRESSION)
        return lambda: target.update_job(conn, workspace, existing.id, change)
    return lambda: target.cancel_job(conn, workspace, existing.id)
