"""The fault matrix: every operation under every fault point, for each target.

Each cell runs on a workspace of its own: set up the job the operation needs,
take a snapshot, arm the fault, run the operation on a fresh connection,
disarm, then check sync (the checker) and atomicity (an operation that raised
must leave the snapshot unchanged). A cell records the outcome, whether the
fault fired and what was found, so the table tells the whole story.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import psycopg

from fault_injection import OPERATIONS, POINTS, FaultInjector, get_point
from kronos.checker import find_divergences
from kronos.jobs import Job, JobChange, JobSpec
from kronos.snapshot import Snapshot, take_snapshot
from kronos.targets import Target, is_positive_control
from kronos.workspace import add_endpoint, create_workspace, drop_workspace

__all__ = ["NO_FAULT", "Cell", "MatrixResult", "run_matrix"]

logger = logging.getLogger(__name__)

NO_FAULT = "none"


@dataclass(frozen=True)
class Cell:
    """What one operation did under one fault point, for one target."""

    operation: str
    fault: str
    target: str
    outcome: str  # "ok" or "failed"
    error: str | None
    sqlstate: str | None
    fired: bool | None  # None when no fault was armed
    divergences: pd.DataFrame = field(repr=False, compare=False)
    atomicity: tuple[str, ...] = ()
    before: Snapshot | None = field(default=None, repr=False, compare=False)
    after: Snapshot | None = field(default=None, repr=False, compare=False)

    @property
    def diverged(self) -> bool:
        return not self.divergences.empty or bool(self.atomicity)

    @property
    def harness_problem(self) -> str | None:
        """Why this cell proves nothing, if it does not."""
        if self.fired is False:
            return f"fault {self.fault} was armed but never fired"
        return None

    def summary(self) -> str:
        """A short text for one cell of the printed table."""
        outcome = self.outcome if self.sqlstate is None else (
            f"{self.outcome} ({self.sqlstate})"
        )
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
            cells = [c for c in self.cells if c.target == target]
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
                    "cells, as expected"
                    if diverged
                    else "positive control never diverged: the harness is broken",
                )
            else:
                verdicts[target] = (
                    not diverged,
                    f"never diverged in {len(cells)} cells"
                    if not diverged
                    else f"DIVERGED in {len(diverged)} of {len(cells)} cells",
                )
        return verdicts

    @property
    def ok(self) -> bool:
        return all(passed for passed, _ in self.verdicts().values())


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
    keep_workspaces: bool = False,
    progress: Callable[[Cell], None] | None = None,
) -> MatrixResult:
    """Run every applicable (operation, fault) pair through every target."""
    chosen = [NO_FAULT, *POINTS] if faults is None else list(faults)
    for fault in chosen:
        if fault != NO_FAULT:
            get_point(fault)
    unknown = sorted(set(operations) - set(OPERATIONS))
    if unknown:
        from kronos.errors import KronosUsageError

        raise KronosUsageError(
            f"unknown operation(s) {unknown}; use {', '.join(OPERATIONS)}"
        )

    run_id = uuid.uuid4().hex[:6]
    cells = []
    with FaultInjector(dsn) as injector, psycopg.connect(
        dsn, autocommit=True
    ) as observer:
        counter = itertools.count(1)
        for operation in operations:
            for fault in applicable_faults(operation, chosen):
                for target in targets:
                    workspace = f"matrix_{run_id}_{next(counter)}"
                    cell = _run_cell(
                        injector, observer, target, operation, fault, workspace
                    )
                    if not keep_workspaces:
                        drop_workspace(observer, workspace)
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
    observer: psycopg.Connection,
    target: Target,
    operation: str,
    fault: str,
    workspace: str,
) -> Cell:
    create_workspace(observer, workspace)
    endpoint = add_endpoint(observer, workspace, "hook", "https://example.test/hook")
    spec = JobSpec.cron(endpoint.id, "nightly report", "0 3 * * *", "Europe/Paris")

    with injector.connect() as conn:
        existing: Job | None = None
        if operation != "create_cron":
            existing = target.create_job(conn, workspace, spec)
        before = take_snapshot(observer, workspace)

        run = _operation(target, conn, workspace, operation, spec, existing)
        armed = (
            injector.arm(fault, connection=conn) if fault != NO_FAULT else None
        )
        error: BaseException | None = None
        try:
            run()
        except Exception as exc:  # the outcome is data here, not a failure
            error = exc
        finally:
            if armed is not None:
                armed.disarm()
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()

    after = take_snapshot(observer, workspace)
    divergences = find_divergences(observer, [workspace])
    atomicity: tuple[str, ...] = ()
    if error is not None:
        atomicity = tuple(before.differences(after))

    cell = Cell(
        operation=operation,
        fault=fault,
        target=target.name,
        outcome="ok" if error is None else "failed",
        error=None if error is None else f"{type(error).__name__}: {error}",
        sqlstate=getattr(error, "sqlstate", None),
        fired=None if armed is None else armed.fired,
        divergences=divergences,
        atomicity=atomicity,
        before=before,
        after=after,
    )
    logger.info("%s / %s / %s: %s", operation, fault, target.name, cell.summary())
    return cell


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
        change = JobChange(cron_expression="30 4 * * 1-5")
        return lambda: target.update_job(conn, workspace, existing.id, change)
    return lambda: target.cancel_job(conn, workspace, existing.id)
