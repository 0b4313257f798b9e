"""Replay a failing sequence of operations step by step, and watch both tables.

A sequence is a list of :class:`Step` records: plain data that a person can
paste, read and edit. :func:`parse_steps` reads it from JSON, from a simple
``op key=value`` line format, or from the program Hypothesis prints for a
failing state machine (``j1 = state.create_cron(schedule='0 3 * * *')``).
:func:`replay` runs it against a target on a real database with the named
fault points armed, and records after every step what the operation did, the
``jobs`` rows, the ``cron.job`` rows and every divergence, so the first step
where the tables part is plain to see.

Jobs, workspaces and endpoints are named by aliases (``j1``, ``w``) because
their real ids and schema names differ from run to run.
"""

from __future__ import annotations

import ast
import json
import logging
import shlex
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import psycopg
from psycopg.pq import TransactionStatus

from fault_injection import FaultInjector, FaultyConnection, get_point
from kronos.checker import COLUMNS, find_divergences
from kronos.errors import KronosUsageError
from kronos.jobs import JobChange, JobSpec
from kronos.snapshot import Snapshot, take_snapshot
from kronos.targets import Target, resolve_target
from kronos.workspace import add_endpoint, create_workspace, drop_workspace

__all__ = [
    "CRON_COLUMNS",
    "DEFAULT_STEPS",
    "JOB_COLUMNS",
    "OPS",
    "UNREPLAYABLE",
    "Replay",
    "Step",
    "StepResult",
    "parse_steps",
    "replay",
    "snapshot_frames",
    "with_setup",
]

logger = logging.getLogger(__name__)

OPS = ("create_workspace", "add_endpoint", "create_cron", "update", "cancel")
_JOB_OPS = ("create_cron", "update", "cancel")

# Points a replay cannot reproduce: it runs in one database, never restarts the
# server, and holds a failed step to all-or-nothing, which an unknown outcome
# (a lost commit acknowledgement) cannot promise. The matrix covers them.
UNREPLAYABLE = {
    "extension.missing": "it strikes another database",
    "server.crash": "it restarts the server",
    "commit.ack_lost": "its outcome is unknown by design",
}
# Which pg_cron call a point with steps strikes, per operation.
_STEP_FOR = {"create_cron": "schedule", "update": "schedule", "cancel": "unschedule"}

# The column order of Snapshot.jobs and Snapshot.cron_entries (kronos.snapshot).
JOB_COLUMNS = [
    "id", "endpoint_id", "name", "trigger", "status", "cron_expression",
    "timezone", "run_at", "idempotency_key", "payload", "version",
    "previous_version_id", "replaced_by_id",
]
CRON_COLUMNS = ["jobid", "jobname", "schedule", "command", "active"]

_KEYS = {"op", "job", "schedule", "fault", "workspace", "endpoint", "timezone", "as"}

# Names other state machines may use for the same rule or argument.
_RULE_NAMES = {
    "create_cron_job": "create_cron",
    "create_job": "create_cron",
    "create": "create_cron",
    "update_job": "update",
    "update_cron": "update",
    "cancel_job": "cancel",
}
_ARG_NAMES = {
    "job_id": "job",
    "cron_expression": "schedule",
    "expression": "schedule",
    "fault_point": "fault",
    "point": "fault",
    "tz": "timezone",
}


@dataclass(frozen=True)
class Step:
    """One operation of a sequence, with the fault armed while it runs.

    ``job`` names the job the step creates (``create_cron``) or acts on
    (``update``, ``cancel``); ``alias`` renames the job the step leaves
    behind, as Hypothesis does when a rule returns a new bundle value. An
    ``update`` moves the alias to the job's new version when it succeeds.
    """

    op: str
    job: str | None = None
    schedule: str | None = None
    fault: str | None = None
    workspace: str | None = None
    endpoint: str | None = None
    timezone: str = "UTC"
    alias: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        """A step from a dict such as ``{"op": "cancel", "job": "j1"}``."""
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise KronosUsageError(
                f"unknown step key(s) {unknown} in {dict(data)!r}; "
                f"a step takes {', '.join(sorted(_KEYS))}"
            )
        if data.get("op") not in OPS:
            raise KronosUsageError(
                f"unknown operation {data.get('op')!r} in {dict(data)!r}; "
                f"use one of {', '.join(OPS)}"
            )
        fault = data.get("fault")
        return cls(
            op=data["op"],
            job=_text(data.get("job")),
            schedule=data.get("schedule"),
            fault=None if fault in (None, "", "none") else str(fault),
            workspace=_text(data.get("workspace")),
            endpoint=_text(data.get("endpoint")),
            timezone=data.get("timezone") or "UTC",
            alias=_text(data.get("as")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The step as the dict :meth:`from_dict` reads, without empty keys."""
        data: dict[str, Any] = {"op": self.op}
        for key in ("workspace", "endpoint", "job", "schedule", "fault"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.timezone != "UTC":
            data["timezone"] = self.timezone
        if self.alias is not None:
            data["as"] = self.alias
        return data

    def describe(self) -> str:
        """The step as a short line: ``cancel j1 under unschedule.before``."""
        parts = [self.op]
        if self.op == "create_workspace":
            parts.append(self.workspace or "w")
        elif self.op == "add_endpoint":
            parts.append(self.endpoint or "hook")
        else:
            parts.append(self.job or "?")
            if self.schedule:
                parts.append(f"on {self.schedule!r}")
        if self.fault:
            parts.append(f"under {self.fault}")
        return " ".join(parts)


# The legacy control's shortest counterexample: the cancel commits the RETIRED
# row, then cron.unschedule fails and the error is swallowed, so the schedule
# of a retired job keeps firing.
DEFAULT_STEPS: tuple[Step, ...] = (
    Step("create_workspace", workspace="w"),
    Step("add_endpoint", endpoint="hook"),
    Step("create_cron", job="j1", schedule="0 3 * * *"),
    Step("cancel", job="j1", fault="unschedule.before"),
)


@dataclass(frozen=True)
class StepResult:
    """What one step did and how both tables looked right after it."""

    number: int
    step: Step
    outcome: str  # "ok" or "failed"
    error: str | None
    sqlstate: str | None
    fired: bool | None  # None when no fault was armed
    job_id: int | None
    jobs: pd.DataFrame = field(repr=False, compare=False)
    cron_jobs: pd.DataFrame = field(repr=False, compare=False)
    divergences: pd.DataFrame = field(repr=False, compare=False)
    atomicity: tuple[str, ...] = ()

    @property
    def diverged(self) -> bool:
        return not self.divergences.empty or bool(self.atomicity)

    @property
    def explanation(self) -> str | None:
        """The first thing wrong after this step, as a sentence."""
        if not self.divergences.empty:
            return str(self.divergences["explanation"].iloc[0])
        if self.atomicity:
            return f"the step failed but changed the database: {self.atomicity[0]}"
        return None


@dataclass
class Replay:
    """Every step of one replay, with where the tables first parted."""

    target: str
    steps: list[StepResult]
    workspaces: dict[str, str]

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
                "divergences": len(result.divergences) + len(result.atomicity),
                "explanation": result.explanation,
            }
            for result in self.steps
        ]
        return pd.DataFrame(rows)


def parse_steps(text: str) -> list[Step]:
    """Read a sequence from JSON, ``op key=value`` lines or a Hypothesis program.

    JSON is a list of step dicts (or ``{"steps": [...]}``). In a Hypothesis
    program, ``x = state.rule(...)`` names the job the rule returns ``x``, and
    lines that are not rule calls (``state = Machine()``, ``state.teardown()``,
    invariant checks such as ``state.in_sync()``, report text) are skipped.
    """
    stripped = text.strip()
    if not stripped:
        raise KronosUsageError("no steps given: paste JSON, op key=value lines "
                               "or the program Hypothesis printed")

    if stripped[0] in "[{":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise KronosUsageError(f"steps are not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            data = data.get("steps", [data])
        return [Step.from_dict(item) for item in data]

    lines = [
        line.strip() for line in stripped.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if any("state." in line for line in lines):
        steps = [step for line in lines if (step := _hypothesis_line(line))]
    else:
        steps = [_plain_line(line) for line in lines]
    if not steps:
        raise KronosUsageError("found no rule calls such as state.create_cron(...)")
    return steps


def with_setup(steps: Iterable[Step]) -> list[Step]:
    """The steps, preceded by a workspace and an endpoint if they create none.

    Sequences pasted from a state machine usually start at the first job
    operation, because the machine made its workspace in ``__init__``.
    """
    steps = list(steps)
    ops = {step.op for step in steps}
    setup = []
    if "create_workspace" not in ops:
        setup.append(Step("create_workspace", workspace="w"))
    if "add_endpoint" not in ops:
        setup.append(Step("add_endpoint", endpoint="hook"))
    return setup + steps


def snapshot_frames(snapshot: Snapshot) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A snapshot's ``jobs`` rows and ``cron.job`` rows as two tables."""
    jobs = pd.DataFrame(list(snapshot.jobs), columns=JOB_COLUMNS)
    cron = pd.DataFrame(list(snapshot.cron_entries), columns=CRON_COLUMNS)
    jobs.insert(0, "workspace", snapshot.workspace)
    return jobs, cron


def replay(
    dsn: str,
    steps: Sequence[Step | Mapping[str, Any]],
    target: str | Target,
    *,
    keep_workspaces: bool = False,
) -> Replay:
    """Run ``steps`` against ``target`` and record both tables after each one.

    A step that raises is an outcome, not an error: the replay goes on, as the
    caller's next request would. Workspaces are created under fresh schema
    names and dropped at the end unless ``keep_workspaces`` is true.
    """
    resolved = resolve_target(target)
    plan = [s if isinstance(s, Step) else Step.from_dict(s) for s in steps]
    _check_plan(plan)

    run = _Run(resolved, uuid.uuid4().hex[:6])
    with FaultInjector(dsn) as injector, psycopg.connect(
        dsn, autocommit=True
    ) as observer, injector.connect() as conn:
        try:
            for number, step in enumerate(plan, start=1):
                run.results.append(run.step(injector, observer, conn, number, step))
        finally:
            if not keep_workspaces:
                for schema in run.workspaces.values():
                    _drop_quietly(observer, schema)

    logger.info("replayed %d steps on %s", len(plan), resolved.name)
    return Replay(resolved.name, run.results, dict(run.workspaces))


class _Run:
    """The aliases and results of one replay while it runs."""

    def __init__(self, target: Target, run_id: str) -> None:
        self.target = target
        self.run_id = run_id
        self.workspaces: dict[str, str] = {}
        self.endpoints: dict[str, tuple[str, int]] = {}
        self.jobs: dict[str, tuple[str, int]] = {}
        self.workspace: str | None = None
        self.endpoint: str | None = None
        self.results: list[StepResult] = []

    def step(
        self,
        injector: FaultInjector,
        observer: psycopg.Connection,
        conn: FaultyConnection,
        number: int,
        step: Step,
    ) -> StepResult:
        before = self._snapshots(observer)
        armed = self._arm(injector, step)

        error: BaseException | None = None
        job_id: int | None = None
        try:
            if armed is None:
                job_id = self._apply(observer, conn, step)
            else:
                # The armed fault hands out the connection it strikes (through
                # a proxy, as another role, ...), so the step runs on that one.
                with armed.connect() as struck:
                    job_id = self._apply(observer, struck, step)
        except Exception as exc:  # the outcome is data here, not a failure
            error = exc
        finally:
            if armed is not None:
                armed.disarm()
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()

        after = self._snapshots(observer)
        atomicity: tuple[str, ...] = ()
        if error is not None and step.op in _JOB_OPS:
            atomicity = tuple(
                change
                for schema, snapshot in before.items()
                for change in snapshot.differences(after[schema])
            )
        jobs, cron = _frames(after.values())

        logger.debug("step %d (%s): %r", number, step.describe(), error)
        return StepResult(
            number=number,
            step=step,
            outcome="ok" if error is None else "failed",
            error=None if error is None else f"{type(error).__name__}: {error}",
            sqlstate=getattr(error, "sqlstate", None),
            fired=None if armed is None else armed.fired,
            job_id=job_id,
            jobs=jobs,
            cron_jobs=cron,
            divergences=self._divergences(observer),
            atomicity=atomicity,
        )

    def _arm(self, injector: FaultInjector, step: Step) -> Any:
        if not step.fault:
            return None
        point = get_point(step.fault)
        schema = self.workspaces[step.workspace or self.workspace or ""]
        at = _STEP_FOR[step.op] if point.steps else None
        return injector.arm(step.fault, at=at, workspace=schema)

    def _apply(
        self, observer: psycopg.Connection, conn: psycopg.Connection, step: Step
    ) -> int | None:
        if step.op == "create_workspace":
            alias = step.workspace or "w"
            schema = f"replay_{self.run_id}_{alias}"
            create_workspace(observer, schema)
            self.workspaces[alias] = schema
            self.workspace = alias
            return None

        schema = self.workspaces[step.workspace or self.workspace or ""]
        if step.op == "add_endpoint":
            alias = step.endpoint or "hook"
            endpoint = add_endpoint(observer, schema, alias, f"https://{alias}.test/")
            self.endpoints[alias] = (schema, endpoint.id)
            self.endpoint = alias
            return None

        if step.op == "create_cron":
            _, endpoint_id = self.endpoints[step.endpoint or self.endpoint or ""]
            spec = JobSpec.cron(
                endpoint_id, step.job or "job", step.schedule or "", step.timezone
            )
            job = self.target.create_job(conn, schema, spec)
            self.jobs[step.alias or step.job or ""] = (schema, job.id)
            return job.id

        schema, job_id = self.jobs[step.job or ""]
        result_alias = step.alias or step.job or ""
        self.jobs[result_alias] = (schema, job_id)
        if step.op == "update":
            change = JobChange(cron_expression=step.schedule)
            new = self.target.update_job(conn, schema, job_id, change)
            self.jobs[result_alias] = (schema, new.id)
            return new.id
        self.target.cancel_job(conn, schema, job_id)
        return job_id

    def _snapshots(self, observer: psycopg.Connection) -> dict[str, Snapshot]:
        return {
            schema: take_snapshot(observer, schema)
            for schema in self.workspaces.values()
        }

    def _divergences(self, observer: psycopg.Connection) -> pd.DataFrame:
        if not self.workspaces:
            return pd.DataFrame(columns=COLUMNS)
        return find_divergences(observer, list(self.workspaces.values()))


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


def _check_plan(plan: Sequence[Step]) -> None:
    """Refuse a sequence that names what it never created, before running it."""
    workspaces: set[str] = set()
    endpoints: set[str] = set()
    jobs: set[str] = set()
    for number, step in enumerate(plan, start=1):
        where = f"step {number} ({step.describe()})"
        if step.fault is not None:
            point = get_point(step.fault)
            if step.fault in UNREPLAYABLE:
                raise KronosUsageError(
                    f"{where}: {step.fault} cannot be replayed: "
                    f"{UNREPLAYABLE[step.fault]}; the fault matrix covers it"
                )
            if step.op not in point.strikes:
                raise KronosUsageError(
                    f"{where}: fault {step.fault} never strikes {step.op}; it "
                    f"strikes {', '.join(point.strikes)}"
                )
        if step.op == "create_workspace":
            workspaces.add(step.workspace or "w")
            continue
        if not workspaces or (step.workspace and step.workspace not in workspaces):
            raise KronosUsageError(
                f"{where}: no such workspace yet; start with create_workspace "
                "(with_setup() adds one)"
            )
        if step.op == "add_endpoint":
            endpoints.add(step.endpoint or "hook")
        elif step.op == "create_cron":
            if not endpoints or (step.endpoint and step.endpoint not in endpoints):
                raise KronosUsageError(f"{where}: add_endpoint first")
            if not step.job or not step.schedule:
                raise KronosUsageError(f"{where}: create_cron needs job and schedule")
            jobs.add(step.alias or step.job)
        else:
            if step.job not in jobs:
                raise KronosUsageError(
                    f"{where}: job {step.job!r} was never created; known jobs: "
                    f"{', '.join(sorted(jobs)) or 'none'}"
                )
            if step.op == "update" and not step.schedule:
                raise KronosUsageError(f"{where}: update needs a new schedule")
            jobs.add(step.alias or step.job)


def _hypothesis_line(line: str) -> Step | None:
    try:
        tree = ast.parse(line)
    except SyntaxError:
        return None
    if len(tree.body) != 1:
        return None
    node = tree.body[0]
    alias = None
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        if isinstance(node.targets[0], ast.Name):
            alias = node.targets[0].id
        call = node.value
    elif isinstance(node, ast.Expr):
        call = node.value
    else:
        return None
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "state"
    ):
        return None
    rule = call.func.attr
    if rule in ("teardown", "check_invariants"):
        return None

    op = _RULE_NAMES.get(rule, rule)
    if op not in OPS and not call.args and not call.keywords and alias is None:
        # Hypothesis prints each invariant it checks as ``state.<name>()``.
        logger.debug("skipping %s: an invariant check, not an operation", line)
        return None
    data: dict[str, Any] = {"op": op}
    for keyword in call.keywords:
        key = _ARG_NAMES.get(keyword.arg or "", keyword.arg)
        if key not in _KEYS:
            logger.debug("ignoring argument %s of rule %s", keyword.arg, rule)
            continue
        data[key] = _literal(keyword.value)
    if alias is not None:
        data["job" if op == "create_cron" and "job" not in data else "as"] = alias
    if op not in OPS:
        raise KronosUsageError(
            f"rule {rule!r} in {line!r} has no replay equivalent; supported "
            f"operations: {', '.join(OPS)}"
        )
    return Step.from_dict(data)


def _plain_line(line: str) -> Step:
    tokens = shlex.split(line)
    data: dict[str, Any] = {"op": tokens[0]}
    for token in tokens[1:]:
        key, sep, value = token.partition("=")
        if not sep:
            raise KronosUsageError(
                f"{token!r} in {line!r} is not key=value; write e.g. "
                "create_cron job=j1 schedule='0 3 * * *'"
            )
        data[key] = value
    return Step.from_dict(data)


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name):
        return node.id  # a bundle variable: the alias of a job
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _drop_quietly(observer: psycopg.Connection, schema: str) -> None:
    try:
        if observer.info.transaction_status != TransactionStatus.IDLE:
            observer.rollback()
        drop_workspace(observer, schema)
    except Exception:  # cleanup must never hide the replay's own outcome
        logger.exception("could not drop replay workspace %s", schema)
