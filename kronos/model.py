"""The expected state: what the database must hold after each operation.

A state machine drives a target and this model side by side. Before an
operation the model says what may happen (success, or which usage errors);
after it, the model takes in what the target reported, and the database, read
through an observer connection, must equal the model's view. The view leaves
out what nobody can predict: timestamps, and executions pg_cron's scheduler
queued on its own (their idempotency key starts with ``cron:``).

The model is plain Python with no database access, so a reader can check each
rule against the design by eye: that is the point of having it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from kronos.errors import (
    DivergenceError,
    EndpointNotFound,
    InvalidJob,
    InvalidSchedule,
    InvalidTimeZone,
    InvalidWorkspace,
    JobNotActive,
    KronosUsageError,
)
from kronos.jobs import Job, JobChange, JobSpec
from kronos.registration import cron_job_name, parse_cron_job_name
from kronos.validation import (
    validate_cron_expression,
    validate_time_zone,
    validate_workspace_name,
)

__all__ = [
    "Expectation",
    "ExpectedJob",
    "LifecycleModel",
    "WorkspaceView",
    "check_versions",
    "read_view",
]

logger = logging.getLogger(__name__)

# An execution row as the model sees it: (job id, status, idempotency key).
Execution = tuple[int, str, str]


@dataclass(frozen=True)
class Expectation:
    """What an operation may do: succeed, or raise one of ``errors``.

    When the input has several problems at once, a target may report any of
    them, so ``errors`` holds every usage error that would be right.
    """

    errors: tuple[type[KronosUsageError], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def allows(self, error: BaseException) -> bool:
        return isinstance(error, self.errors) if self.errors else False

    def describe(self) -> str:
        if self.ok:
            return "success"
        return " or ".join(error.__name__ for error in self.errors)


@dataclass(frozen=True)
class ExpectedJob:
    """One job version as the model expects it in the ``jobs`` table."""

    id: int
    endpoint_id: int
    name: str
    trigger: str
    status: str
    cron_expression: str | None
    timezone: str | None
    run_at: datetime | None
    idempotency_key: str | None
    payload: Any
    version: int
    previous_version_id: int | None
    replaced_by_id: int | None

    def __post_init__(self) -> None:
        # Aware datetimes of different zones compare unequal when one falls in
        # a DST gap or fold (PEP 495), so every instant is kept in UTC.
        if self.run_at is not None:
            object.__setattr__(self, "run_at", self.run_at.astimezone(timezone.utc))

    @classmethod
    def from_job(cls, job: Job) -> ExpectedJob:
        return cls(
            job.id, job.endpoint_id, job.name, job.trigger, job.status,
            job.cron_expression, job.timezone, job.run_at, job.idempotency_key,
            job.payload, job.version, job.previous_version_id, job.replaced_by_id,
        )


@dataclass(frozen=True)
class WorkspaceView:
    """The comparable content of one workspace and its pg_cron entries."""

    workspace: str
    jobs: tuple[ExpectedJob, ...]
    executions: tuple[Execution, ...]
    # (jobname, schedule, active) of the workspace's entries in cron.job
    cron_entries: tuple[tuple[str, str, bool], ...]

    def differences(self, actual: WorkspaceView) -> list[str]:
        """Sentences naming each way ``actual`` differs from this view."""
        found = []
        mine = {job.id: job for job in self.jobs}
        theirs = {job.id: job for job in actual.jobs}
        for job_id in sorted(mine.keys() | theirs.keys()):
            want, got = mine.get(job_id), theirs.get(job_id)
            if want != got:
                found.append(f"job {job_id}: expected {want}, found {got}")
        for label in ("executions", "cron_entries"):
            want_rows = sorted(getattr(self, label), key=repr)
            got_rows = sorted(getattr(actual, label), key=repr)
            if want_rows != got_rows:
                found.append(f"{label}: expected {want_rows}, found {got_rows}")
        where = f"workspace {self.workspace!r}: "
        return [where + sentence for sentence in found]


@dataclass
class _Workspace:
    name: str
    endpoints: set[int] = field(default_factory=set)
    jobs: dict[int, ExpectedJob] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)


class LifecycleModel:
    """The workspaces, endpoints, jobs and schedules a run should have made."""

    def __init__(self) -> None:
        self._workspaces: dict[str, _Workspace] = {}

    # -- what exists ----------------------------------------------------------

    @property
    def workspaces(self) -> list[str]:
        return list(self._workspaces)

    def job(self, workspace: str, job_id: int) -> ExpectedJob:
        return self._workspaces[workspace].jobs[job_id]

    def view(self, workspace: str) -> WorkspaceView:
        """What the database must hold for ``workspace`` right now."""
        space = self._workspaces[workspace]
        jobs = tuple(space.jobs[job_id] for job_id in sorted(space.jobs))
        entries = tuple(
            (cron_job_name(workspace, job.id), job.cron_expression or "", True)
            for job in jobs
            if job.trigger == "CRON" and job.status == "ACTIVE"
        )
        return WorkspaceView(workspace, jobs, tuple(space.executions), entries)

    # -- workspaces and endpoints --------------------------------------------

    def expect_create_workspace(self, name: str, *, exists: bool) -> Expectation:
        """``exists``: a schema of that name is already in the database."""
        try:
            validate_workspace_name(name)
        except InvalidWorkspace:
            return Expectation((InvalidWorkspace,))
        if exists or name in self._workspaces:
            return Expectation((InvalidWorkspace,))
        return Expectation()

    def created_workspace(self, name: str) -> None:
        self._workspaces[name] = _Workspace(name)

    def dropped_workspace(self, name: str) -> None:
        self._workspaces.pop(name, None)

    def added_endpoint(self, workspace: str, endpoint_id: int) -> None:
        self._workspaces[workspace].endpoints.add(endpoint_id)

    # -- jobs -----------------------------------------------------------------

    def expect_create(self, workspace: str, spec: JobSpec) -> Expectation:
        errors = _spec_errors(spec)
        if workspace not in self._workspaces:
            errors.append(InvalidWorkspace)
        elif spec.endpoint_id not in self._workspaces[workspace].endpoints:
            errors.append(EndpointNotFound)
        return Expectation(tuple(errors))

    def existing_delayed(self, workspace: str, spec: JobSpec) -> ExpectedJob | None:
        """The DELAYED job a create with this key returns instead of inserting."""
        if spec.trigger != "DELAYED":
            return None
        for job in self._workspaces[workspace].jobs.values():
            if (
                job.trigger == "DELAYED"
                and job.endpoint_id == spec.endpoint_id
                and job.idempotency_key == spec.idempotency_key
            ):
                return job
        return None

    def created(self, workspace: str, spec: JobSpec, job: Job) -> None:
        """Take in a successful create; raise if the job is not what was asked."""
        space = self._workspaces[workspace]
        existing = self.existing_delayed(workspace, spec)
        if existing is not None:
            _same(ExpectedJob.from_job(job), existing, "repeated DELAYED create")
            return

        if job.id in space.jobs:
            raise DivergenceError(
                f"create returned job {job.id}, which already existed in "
                f"{workspace!r}; a create must insert a new row"
            )
        expected = ExpectedJob(
            job.id, spec.endpoint_id, spec.name, spec.trigger, "ACTIVE",
            spec.cron_expression, spec.timezone, spec.run_at, spec.idempotency_key,
            dict(spec.payload), 1, None, None,
        )
        _same(ExpectedJob.from_job(job), expected, "create")
        space.jobs[job.id] = expected

        if spec.trigger == "IMMEDIATE":
            space.executions.append((job.id, "QUEUED", "immediate"))
        elif spec.trigger == "DELAYED":
            space.executions.append((job.id, "PENDING", spec.idempotency_key or ""))

    def expect_update(
        self, workspace: str, job_id: int, change: JobChange
    ) -> Expectation:
        errors = _change_errors(change)
        old = self._workspaces[workspace].jobs[job_id]
        if old.status != "ACTIVE":
            errors.append(JobNotActive)
        elif old.trigger != "CRON":
            errors.append(InvalidJob)
        return Expectation(tuple(errors))

    def updated(self, workspace: str, job_id: int, change: JobChange, new: Job) -> None:
        """Take in a successful update: old version retired, linked to ``new``."""
        space = self._workspaces[workspace]
        old = space.jobs[job_id]
        if new.id in space.jobs:
            raise DivergenceError(
                f"update of job {job_id} returned job {new.id}, which already "
                "existed; an update must insert a new version"
            )
        expected = replace(
            old,
            id=new.id,
            cron_expression=_pick(change.cron_expression, old.cron_expression),
            timezone=_pick(change.timezone, old.timezone),
            payload=dict(change.payload) if change.payload is not None else old.payload,
            version=old.version + 1,
            previous_version_id=old.id,
        )
        _same(ExpectedJob.from_job(new), expected, "update")
        space.jobs[new.id] = expected
        space.jobs[job_id] = replace(old, status="RETIRED", replaced_by_id=new.id)

    def expect_cancel(self, workspace: str, job_id: int) -> Expectation:
        job = self._workspaces[workspace].jobs[job_id]
        return Expectation(() if job.status == "ACTIVE" else (JobNotActive,))

    def cancelled(self, workspace: str, job_id: int, retired: Job) -> None:
        """Take in a successful cancel: retired, unlinked, executions cancelled."""
        space = self._workspaces[workspace]
        expected = replace(space.jobs[job_id], status="RETIRED", replaced_by_id=None)
        _same(ExpectedJob.from_job(retired), expected, "cancel")
        space.jobs[job_id] = expected
        space.executions = [
            (owner, "CANCELLED", key)
            if owner == job_id and status in ("PENDING", "QUEUED")
            else (owner, status, key)
            for owner, status, key in space.executions
        ]


def _pick(new: str | None, old: str | None) -> str | None:
    return old if new is None else new


def _same(actual: ExpectedJob, expected: ExpectedJob, what: str) -> None:
    if actual != expected:
        raise DivergenceError(
            f"{what} returned {actual}, expected {expected}; the target's answer "
            "does not match the request"
        )


def _spec_errors(spec: JobSpec) -> list[type[KronosUsageError]]:
    errors: list[type[KronosUsageError]] = []
    if spec.trigger == "CRON":
        errors += _schedule_errors(spec.cron_expression, spec.timezone)
    return errors


def _change_errors(change: JobChange) -> list[type[KronosUsageError]]:
    errors: list[type[KronosUsageError]] = []
    if change.cron_expression is None and change.timezone is None and (
        change.payload is None
    ):
        errors.append(InvalidJob)
    if change.cron_expression is not None:
        errors += _schedule_errors(change.cron_expression, None)
    if change.timezone is not None:
        errors += _schedule_errors(None, change.timezone)
    return errors


def _schedule_errors(
    expression: str | None, zone: str | None
) -> list[type[KronosUsageError]]:
    # The validator is the specification of legal input here; the strategies'
    # own tests hold it to pg_cron, so it is not trusted blindly.
    errors: list[type[KronosUsageError]] = []
    if expression is not None:
        try:
            validate_cron_expression(expression)
        except InvalidSchedule:
            errors.append(InvalidSchedule)
    if zone is not None:
        try:
            validate_time_zone(zone)
        except InvalidTimeZone:
            errors.append(InvalidTimeZone)
    return errors


# -- reading the database -------------------------------------------------------

_JOBS = (
    "SELECT id, endpoint_id, name, trigger, status, cron_expression, timezone,"
    " run_at, idempotency_key, payload, version, previous_version_id,"
    " replaced_by_id FROM {}.jobs ORDER BY id"
)
_EXECUTIONS = (
    "SELECT job_id, status, idempotency_key FROM {}.executions"
    " WHERE idempotency_key NOT LIKE 'cron:%%' ORDER BY id"
)


def read_view(
    conn: psycopg.Connection, workspaces: Iterable[str]
) -> dict[str, WorkspaceView]:
    """The database's view of each workspace, read at one instant."""
    names = list(workspaces)
    views: dict[str, WorkspaceView] = {}
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        entries = conn.execute(
            "SELECT jobname, schedule, active FROM cron.job"
            " WHERE jobname LIKE 'kronos\\_%' AND database = current_database()"
        ).fetchall()
        for name in names:
            schema = sql.Identifier(name)
            jobs = conn.execute(sql.SQL(_JOBS).format(schema)).fetchall()
            executions = conn.execute(sql.SQL(_EXECUTIONS).format(schema)).fetchall()
            mine = tuple(
                (jobname, schedule, bool(active))
                for jobname, schedule, active in entries
                if (parsed := parse_cron_job_name(jobname)) and parsed[0] == name
            )
            views[name] = WorkspaceView(
                name,
                tuple(ExpectedJob(*row) for row in jobs),
                tuple((int(a), str(b), str(c)) for a, b, c in executions),
                mine,
            )
    return views


def check_versions(view: WorkspaceView) -> list[str]:
    """Sentences naming every broken version chain in one workspace.

    A chain has at most one ACTIVE member, and a retired member that was
    replaced points at a successor that points back and is one version on.
    """
    problems = []
    jobs: Mapping[int, ExpectedJob] = {job.id: job for job in view.jobs}
    roots: dict[int, list[ExpectedJob]] = {}
    where = f"workspace {view.workspace!r}"

    for job in view.jobs:
        root, seen = job, {job.id}
        while root.previous_version_id is not None:
            parent = jobs.get(root.previous_version_id)
            if parent is None or parent.id in seen:
                problems.append(f"{where}: job {root.id} has a broken back link")
                break
            seen.add(parent.id)
            root = parent
        roots.setdefault(root.id, []).append(job)

        if job.replaced_by_id is None:
            continue
        successor = jobs.get(job.replaced_by_id)
        if job.status != "RETIRED":
            problems.append(f"{where}: ACTIVE job {job.id} has a successor")
        if successor is None or successor.previous_version_id != job.id:
            problems.append(
                f"{where}: job {job.id} is replaced by {job.replaced_by_id}, which "
                "does not point back to it"
            )
        elif successor.version != job.version + 1:
            problems.append(
                f"{where}: job {successor.id} is version {successor.version} after "
                f"version {job.version}"
            )

    for root_id, chain in roots.items():
        active = sorted(job.id for job in chain if job.status == "ACTIVE")
        if len(active) > 1:
            problems.append(
                f"{where}: the chain of job {root_id} has {len(active)} ACTIVE "
                f"versions: {active}"
            )
    return problems
