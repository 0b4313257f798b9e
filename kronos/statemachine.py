"""A Hypothesis state machine over the job lifecycle, with faults, for any target.

:func:`make_state_machine` builds a ``RuleBasedStateMachine`` class bound to a
database and a target. Its rules add workspaces (names of every legal shape,
and now and then an illegal one) and endpoints, create IMMEDIATE, DELAYED and
CRON jobs, update and cancel them, each job operation optionally under a fault
point from ``fault_injection.POINTS``. A :class:`~kronos.model.LifecycleModel`
follows every outcome, and after every step three invariants are checked
through a separate observer connection:

* sync: the checker finds no divergence between ``jobs`` and ``cron.job``;
* atomicity: the database equals the model, so an operation that returned
  is fully applied and one that raised left everything as it was; an unknown
  outcome (the connection died) must be all before or all after;
* versions: one ACTIVE member per chain, every link answered by a back link.

>>> Machine = make_state_machine(dsn, "atomic")
>>> run_state_machine_as_test(Machine, settings=settings(max_examples=20))
>>> Machine.close()

A failing run prints the steps as a Python program (``state =
JobLifecycle()`` then one ``state.<rule>(...)`` per step) and stores the
example in Hypothesis's database; :meth:`JobLifecycle.replay` runs such a
program again; :meth:`JobLifecycle.replay_steps` runs it one step at a time,
for those who look between steps (``kronos.replay``). Each example starts
clean: the workspaces it made are dropped in ``teardown``, and the server is
never restarted between examples.
"""

from __future__ import annotations

import ast
import datetime
import inspect
import logging
import zoneinfo
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)
from psycopg import sql
from psycopg.pq import TransactionStatus

from fault_injection import ArmedFault, FaultInjector, FaultyConnection, get_point
from kronos import strategies
from kronos.checker import find_divergences, format_report
from kronos.errors import DivergenceError, KronosUsageError
from kronos.jobs import Job, JobChange, JobSpec
from kronos.model import (
    Expectation,
    LifecycleModel,
    WorkspaceView,
    check_versions,
    read_view,
)
from kronos.outcome import resolve_outcome, run_operation
from kronos.registration import parse_cron_job_name
from kronos.targets import Target, resolve_target
from kronos.workspace import (
    add_endpoint,
    create_workspace,
    drop_workspace,
    ensure_registry,
)

__all__ = [
    "CRASH",
    "EndpointRef",
    "JobLifecycle",
    "JobRef",
    "ProgramStep",
    "ReplayedStep",
    "StepOutcome",
    "make_state_machine",
    "parse_program",
]

logger = logging.getLogger(__name__)

# The fault point of crash runs: the server is killed while the operation is
# inside its pg_cron call, and recovers before the operation's error returns.
CRASH = "server.crash"


@dataclass(frozen=True)
class EndpointRef:
    """An endpoint the machine added: its workspace and id."""

    workspace: str
    id: int


@dataclass(frozen=True)
class JobRef:
    """A job version the machine created or updated: its workspace and id."""

    workspace: str
    id: int


class _Session:
    """The connections one machine class shares across its examples.

    Opening them per example would cost more than most steps; they are opened
    on first use and again after a crash.
    """

    def __init__(self, dsn: str, server: Any = None) -> None:
        self.dsn = dsn
        self.server = server
        self._injector: FaultInjector | None = None
        self._conn: FaultyConnection | None = None
        self._observer: psycopg.Connection | None = None

    @property
    def injector(self) -> FaultInjector:
        if self._injector is None:
            self._injector = FaultInjector(self.dsn, server=self.server, seed=0)
        return self._injector

    def start_example(self) -> None:
        """Make this example's fault outcomes repeatable when it is replayed."""
        if self._injector is not None:
            self._injector.reseed(0)

    @property
    def conn(self) -> FaultyConnection:
        if self._conn is None or self._conn.closed:
            self._conn = self.injector.connect()
        return self._conn

    @property
    def current_conn(self) -> FaultyConnection | None:
        return self._conn

    @property
    def observer(self) -> psycopg.Connection:
        if self._observer is None or self._observer.closed:
            self._observer = psycopg.connect(self.dsn, autocommit=True)
            ensure_registry(self._observer)
        return self._observer

    def close(self) -> None:
        """Close every connection; log, never raise, what fails on a dead server."""
        for closer in (
            self._conn.close if self._conn else None,
            self._observer.close if self._observer else None,
            self._injector.close if self._injector else None,
        ):
            if closer is None:
                continue
            try:
                closer()
            except Exception:
                logger.warning("could not close a state machine connection",
                               exc_info=True)
        self._injector = self._conn = self._observer = None


@dataclass
class StepOutcome:
    """How one job operation ended: ``ok``, ``failed`` or ``unknown``.

    ``fired`` is true when the armed fault fired or the connection was lost.
    """

    kind: str
    result: Any = None
    error: BaseException | None = None
    fired: bool = False
    resolved: str | None = None  # committed or aborted, for an unknown outcome


@dataclass(frozen=True)
class ProgramStep:
    """One rule call of a program the machine printed.

    ``alias`` is the name the program gives the call's result (``jobs_0``),
    ``fault`` the fault point it armed (``None``: none, or a rule without
    faults). ``line`` is the call as printed, which is what runs on replay.
    """

    line: str
    rule: str
    alias: str | None = None
    fault: str | None = None

    def describe(self) -> str:
        """The step as a short phrase: ``cancel jobs_0 under unschedule.before``."""
        node = ast.parse(self.line).body[0]
        call = getattr(node, "value", None)
        acted_on = [
            keyword.value.id
            for keyword in getattr(call, "keywords", [])
            if keyword.arg in ("workspace", "endpoint", "job")
            and isinstance(keyword.value, ast.Name)
        ]
        parts = [self.rule, *acted_on]
        if self.alias is not None:
            parts.append(f"-> {self.alias}")
        if self.fault is not None:
            parts.append(f"under {self.fault}")
        return " ".join(parts)


@dataclass(frozen=True)
class ReplayedStep:
    """A step of a replay, just run: the machine can still be read.

    ``error`` is what the step or the invariants after it raised; the replay
    raises it once the caller has looked. ``outcome`` is how the step's job
    operation ended (``None`` for a step without one).
    """

    number: int
    step: ProgramStep
    state: JobLifecycle
    result: Any
    outcome: StepOutcome | None
    error: BaseException | None


def parse_program(text: str) -> list[ProgramStep]:
    """The rule calls of a program Hypothesis printed, in order.

    Skips what is not a rule call: ``state = JobLifecycle()``, the invariant
    checks Hypothesis prints between steps, ``state.teardown()`` and the report
    around the program. Whether each rule exists is checked on replay, against
    the machine that runs it.
    """
    steps = []
    for line in text.splitlines():
        step = _program_step(line.strip())
        if step is not None:
            steps.append(step)
    return steps


def _rule_names(machine: type[RuleBasedStateMachine]) -> list[str]:
    """Every rule of ``machine``, in name order.

    Hypothesis marks a rule's function with this attribute; it has no public
    way to list a machine's rules.
    """
    return [
        name for name, member in inspect.getmembers(machine)
        if getattr(member, "hypothesis_stateful_rule", None) is not None
    ]


def _program_step(line: str) -> ProgramStep | None:
    try:
        body = ast.parse(line).body
    except SyntaxError:
        return None
    if len(body) != 1 or not isinstance(body[0], (ast.Assign, ast.Expr)):
        return None
    node = body[0]
    call = node.value
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "state"
    ):
        return None

    # Invariants and teardown live on the base class; rules only on machines.
    rule = call.func.attr
    if hasattr(JobLifecycle, rule):
        return None

    alias = None
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        alias = node.targets[0].id
    fault = next(
        (
            keyword.value.value
            for keyword in call.keywords
            if keyword.arg == "fault" and isinstance(keyword.value, ast.Constant)
        ),
        None,
    )
    return ProgramStep(line, rule, alias, fault)


class JobLifecycle(RuleBasedStateMachine):
    """The base of every machine :func:`make_state_machine` builds.

    Subclasses get their class attributes from the factory; a user may subclass
    the returned class again to add rules of their own.
    """

    dsn: ClassVar[str]
    target: ClassVar[Target]
    fault_names: ClassVar[tuple[str, ...]]
    max_workspaces: ClassVar[int] = 3
    server: ClassVar[Any] = None
    # How often the server was crashed, over every example of this class.
    crashes: ClassVar[int] = 0
    _session: ClassVar[_Session]

    def __init__(self) -> None:
        super().__init__()
        self._session.start_example()
        self.model = LifecycleModel()
        self.steps = 0
        # How the last job operation ended, for a replay to show.
        self.last_outcome: StepOutcome | None = None
        # Nothing to compare yet, so nothing the checker could find.
        self._clean_fingerprint: tuple | None = ((), ())

    # -- resources ------------------------------------------------------------

    @classmethod
    def close(cls) -> None:
        """Close the connections the machine's examples shared."""
        cls._session.close()

    @property
    def conn(self) -> FaultyConnection:
        return self._session.conn

    @property
    def observer(self) -> psycopg.Connection:
        return self._session.observer

    def teardown(self) -> None:
        """Drop the workspaces this example made, so the next starts clean."""
        for name in self.model.workspaces:
            try:
                drop_workspace(self.observer, name)
            except Exception:
                # The next example checks names against the database, so a
                # leftover schema cannot fool it; only log it.
                logger.warning("could not drop workspace %r", name, exc_info=True)
            self.model.dropped_workspace(name)

    # -- replay -----------------------------------------------------------------

    @classmethod
    def replay(cls, program: str) -> None:
        """Run a program as Hypothesis printed it, checking after every step.

        Lines that are not ``[name =] state.rule(...)`` (the report around the
        program, ``state = ...``, invariant checks) are skipped. Raises what the
        run raises.
        """
        for _ in cls.replay_steps(program):
            pass

    @classmethod
    def rule_names(cls) -> list[str]:
        """The rules this machine can run (``crash_server`` only in crash runs)."""
        return [
            name for name in _rule_names(cls)
            if name != "crash_server" or CRASH in cls.fault_names
        ]

    @classmethod
    def replay_steps(cls, program: str) -> Iterator[ReplayedStep]:
        """Run a program one rule call at a time, yielding after each.

        The invariants are checked after every step. A step that fails (it or
        the invariants raise) is yielded with its error, and the error is raised
        when the caller asks for the next step; the workspaces are dropped
        either way, once the caller is done.
        """
        steps = parse_program(program)
        known = set(_rule_names(cls))
        unknown = [step.line for step in steps if step.rule not in known]
        if unknown:
            raise KronosUsageError(
                f"{unknown[0]!r} calls no rule of the state machine; its rules "
                f"are {', '.join(sorted(known))}"
            )

        state = cls()
        namespace: dict[str, Any] = {
            "state": state, "datetime": datetime, "zoneinfo": zoneinfo,
        }
        try:
            state.check_invariants_now()
            for number, step in enumerate(steps, start=1):
                state.last_outcome = None
                error: BaseException | None = None
                try:
                    exec(step.line, namespace)  # noqa: S102 - the program is ours
                    state.check_invariants_now()
                except Exception as exc:  # shown to the caller, then raised
                    error = exc
                result = namespace.get(step.alias) if step.alias else None
                yield ReplayedStep(
                    number, step, state, result, state.last_outcome, error
                )
                if error is not None:
                    raise error
        finally:
            state.teardown()

    def check_invariants_now(self) -> None:
        """The three invariants, as the machine runs them after every step."""
        self.invariants_hold()

    # -- invariants -------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        """Sync, atomicity and versions, from one read of the database."""
        if not self.model.workspaces:
            return
        views = read_view(self.observer, self.model.workspaces)
        self.sync_holds()
        self.database_matches_model(views)
        self.versions_hold(views)

    def sync_holds(self) -> None:
        """Sync: the checker finds nothing in the workspaces of this example.

        The checker reads only CRON job rows and ``cron.job``; when neither
        changed since it last found nothing, its answer cannot differ, so it
        is not asked again (it costs more than all the other checks together).
        """
        if not self.model.workspaces:
            return
        fingerprint = self._sync_fingerprint()
        if fingerprint == self._clean_fingerprint:
            return
        found = find_divergences(self.observer, self.model.workspaces)
        if not found.empty:
            raise DivergenceError(
                f"{format_report(found)}\n(target {self.target.name}; the steps "
                "above reproduce it)"
            )
        self._clean_fingerprint = fingerprint

    def database_matches_model(
        self, views: dict[str, WorkspaceView] | None = None
    ) -> None:
        """Atomicity: every workspace holds exactly what the outcomes imply."""
        actual = views or read_view(self.observer, self.model.workspaces)
        problems = [
            sentence
            for name in self.model.workspaces
            for sentence in self.model.view(name).differences(actual[name])
        ]
        if problems:
            raise DivergenceError(
                "the database does not match what the operations reported:\n  "
                + "\n  ".join(problems)
            )

    def versions_hold(self, views: dict[str, WorkspaceView] | None = None) -> None:
        """Versions: one ACTIVE member per chain, links in both directions."""
        actual = views or read_view(self.observer, self.model.workspaces)
        problems = [p for view in actual.values() for p in check_versions(view)]
        if problems:
            raise DivergenceError("broken version chains:\n  " + "\n  ".join(problems))

    def _sync_fingerprint(self) -> tuple:
        """What the checker's answer depends on: CRON rows and their entries."""
        mine = set(self.model.workspaces)
        with self.observer.transaction(force_rollback=True):
            self.observer.execute(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
            )
            entries = [
                row
                for row in self.observer.execute(
                    "SELECT jobid, jobname, schedule, command, active, database"
                    " FROM cron.job WHERE jobname LIKE 'kronos\\_%' ORDER BY jobid"
                ).fetchall()
                if (parsed := parse_cron_job_name(row[1])) and parsed[0] in mine
            ]
            jobs = [
                (name, row)
                for name in self.model.workspaces
                for row in self.observer.execute(
                    sql.SQL(
                        "SELECT id, status, cron_expression FROM {}.jobs"
                        " WHERE trigger = 'CRON' ORDER BY id"
                    ).format(sql.Identifier(name))
                ).fetchall()
            ]
        return tuple(entries), tuple(jobs)

    # -- running one operation ----------------------------------------------------

    def _arm(
        self, fault: str | None, workspace: str, step: str
    ) -> tuple[ArmedFault | None, FaultyConnection]:
        """Arm ``fault`` at ``step`` and return it with the connection it strikes.

        Points that change nothing on the server strike only connections made
        for them (a proxy, a restricted role, a short timeout); for those the
        operation runs on a connection from the armed fault.
        """
        if fault is None:
            return None, self.conn
        point = get_point(fault)
        armed = self._session.injector.arm(
            fault,
            connection=self.conn,
            workspace=workspace,
            at=step if step in point.steps else None,
        )
        if armed.dsn != self._session.dsn:
            return armed, armed.connect()
        return armed, self.conn

    def _call(
        self,
        fault: str | None,
        workspace: str,
        step: str,
        call: Callable[[FaultyConnection], Any],
    ) -> StepOutcome:
        """Run ``call`` under ``fault``; never raise what the call raised.

        The outcome is ``ok``, ``failed`` or ``unknown`` as
        :func:`kronos.outcome.run_operation` tells it; an unknown one (the
        connection died with its COMMIT in flight) is resolved with
        ``pg_xact_status`` before the database is read, so a commit still in
        progress cannot be mistaken for one that never happened.
        """
        armed, conn = self._arm(fault, workspace, step)
        left_open: list[bool] = []

        def guarded() -> Any:
            try:
                return call(conn)
            finally:
                if not (conn.closed or conn.broken) and (
                    conn.info.transaction_status != TransactionStatus.IDLE
                ):
                    left_open.append(True)

        try:
            told = run_operation(conn, guarded)
        finally:
            fired = armed.fired if armed is not None else False
            if armed is not None:
                armed.disarm()
        if fired and fault == CRASH:
            type(self).crashes += 1
        lost = conn.closed or conn.broken
        if conn is not self._session.current_conn:
            conn.close()
        if lost:
            self._recover()

        if left_open:
            raise DivergenceError(
                f"target {self.target.name} left the connection in a transaction; "
                "a target must commit or roll back before it returns or raises"
            )
        if told.status == "unknown":
            told = resolve_outcome(told, self._session.dsn)
        self.last_outcome = StepOutcome(
            told.status, told.value, told.exception, fired or lost, told.resolved
        )
        return self.last_outcome

    def _recover(self) -> None:
        """Reconnect after a crash, restarting the server if it is still down."""
        self._session.close()
        if self.server is not None and not self.server.is_running():
            self.server.restart()

    def _judge(
        self,
        what: str,
        workspace: str,
        expectation: Expectation,
        before: WorkspaceView,
        outcome: StepOutcome,
        apply: Callable[[Any], None],
        resolve: Callable[[WorkspaceView], Any] | None = None,
    ) -> None:
        """Hold one outcome to the model, and take it in when it succeeded.

        ``resolve`` reads, from the database after an unknown outcome, what the
        operation would have returned had it committed, or ``None`` if it did
        not.
        """
        after = read_view(self.observer, [workspace])[workspace]
        error = outcome.error

        if outcome.kind == "unknown" and outcome.resolved != "aborted":
            if after == before and outcome.resolved != "committed":
                return
            assert resolve is not None, f"{what} cannot end in an unknown outcome"
            result = resolve(after)
            if result is None:
                raise DivergenceError(
                    f"{what} ended in an unknown outcome ({error!r}, transaction "
                    f"{outcome.resolved or 'unresolved'}) and left a state that is "
                    "not the whole after-state:\n  "
                    + "\n  ".join(before.differences(after) or ["no change"])
                )
            apply(result)
            return

        if outcome.kind == "ok":
            if not expectation.ok:
                raise DivergenceError(
                    f"{what} succeeded, but the model expected "
                    f"{expectation.describe()}"
                )
            apply(outcome.result)
            return

        assert error is not None
        if isinstance(error, KronosUsageError):
            if not expectation.allows(error):
                raise DivergenceError(
                    f"{what} raised {type(error).__name__}: {error}; the model "
                    f"expected {expectation.describe()}"
                ) from error
        elif not outcome.fired and outcome.kind != "unknown":
            raise DivergenceError(
                f"{what} raised {type(error).__name__}: {error} with no fault "
                f"fired; the model expected {expectation.describe()}. An internal "
                "error leaked where a usage error or success was due"
            ) from error
        changes = before.differences(after)
        if changes:
            raise DivergenceError(
                f"{what} raised {type(error).__name__} but changed the database "
                "(an operation that raised must leave it as it was):\n  "
                + "\n  ".join(changes)
            ) from error


def make_state_machine(
    dsn: str,
    target: str | Target = "atomic",
    *,
    fault_points: Iterable[str] | None = None,
    server: Any = None,
    crash: bool = False,
    max_workspaces: int = 3,
) -> type[JobLifecycle]:
    """A state machine class that verifies ``target`` on the database at ``dsn``.

    ``target`` is ``atomic``, ``legacy``, ``package.module:object`` or a target
    object. ``fault_points`` defaults to every catalogued point usable around
    one call (:func:`kronos.strategies.in_process_fault_points`); pass ``[]``
    for a run without faults. ``crash=True`` adds ``server.crash`` to the
    points, which needs ``server``, the embedded server (``kronos_server``).
    Call ``close()`` on the class when done with it.
    """
    resolved = resolve_target(target)
    points = tuple(
        strategies.in_process_fault_points() if fault_points is None else fault_points
    )
    if crash:
        if server is None:
            raise KronosUsageError(
                "crash=True needs server=, the embedded server that can be "
                "crashed and restarted (the kronos_server fixture)"
            )
        points += (CRASH,)

    faults = strategies.fault_points(list(points))

    class Machine(JobLifecycle):
        workspaces = Bundle("workspaces")
        endpoints = Bundle("endpoints")
        jobs = Bundle("jobs")

        # -- workspaces and endpoints -------------------------------------------

        @precondition(lambda self: len(self.model.workspaces) < self.max_workspaces)
        @rule(target=workspaces, workspace=strategies.workspace_names())
        def create_workspace(self, workspace: str) -> Any:
            """A workspace of any legal name; a taken name must be refused."""
            exists = self._schema_exists(workspace)
            expectation = self.model.expect_create_workspace(workspace, exists=exists)
            try:
                create_workspace(self.observer, workspace)
            except KronosUsageError as exc:
                if not expectation.allows(exc):
                    raise DivergenceError(
                        f"create_workspace({workspace!r}) raised {exc!r}; "
                        f"expected {expectation.describe()}"
                    ) from exc
                return multiple()
            if not expectation.ok:
                raise DivergenceError(
                    f"create_workspace({workspace!r}) succeeded; expected "
                    f"{expectation.describe()}"
                )
            self.model.created_workspace(workspace)
            return workspace

        @rule(workspace=strategies.invalid_workspace_names())
        def create_workspace_with_bad_name(self, workspace: str) -> None:
            """An illegal name: a usage error, and no schema or registry row."""
            before = self._namespaces()
            try:
                create_workspace(self.observer, workspace)
            except KronosUsageError:
                pass
            else:
                self.model.created_workspace(workspace)  # so teardown drops it
                raise DivergenceError(
                    f"create_workspace({workspace!r}) accepted an illegal name"
                )
            if self._namespaces() != before:
                raise DivergenceError(
                    f"create_workspace({workspace!r}) raised but left a schema "
                    "or a registry row behind"
                )

        @rule(target=endpoints, workspace=workspaces)
        def add_endpoint(self, workspace: str) -> EndpointRef:
            self.steps += 1
            endpoint = add_endpoint(
                self.observer, workspace, f"hook {self.steps}", "https://hook.test/"
            )
            self.model.added_endpoint(workspace, endpoint.id)
            return EndpointRef(workspace, endpoint.id)

        # -- jobs ---------------------------------------------------------------

        @rule(target=jobs, endpoint=endpoints, payload=strategies.payloads(),
              fault=faults)
        def create_immediate(
            self, endpoint: EndpointRef, payload: dict, fault: str | None,
        ) -> Any:
            spec = JobSpec.immediate(endpoint.id, "now", payload)
            return self._create(endpoint.workspace, spec, fault)

        @rule(target=jobs, endpoint=endpoints, key=strategies.idempotency_keys(),
              run_at=strategies.run_at_times(), fault=faults)
        def create_delayed(
            self, endpoint: EndpointRef, key: str, run_at: datetime.datetime,
            fault: str | None,
        ) -> Any:
            spec = JobSpec.delayed(endpoint.id, "later", run_at, key)
            return self._create(endpoint.workspace, spec, fault)

        @rule(target=jobs, endpoint=endpoints, schedule=strategies.schedules(),
              timezone=strategies.zones(), name=strategies.job_names(),
              fault=faults)
        def create_cron(
            self, endpoint: EndpointRef, schedule: str, timezone: str, name: str,
            fault: str | None,
        ) -> Any:
            spec = JobSpec.cron(endpoint.id, name, schedule, timezone)
            return self._create(endpoint.workspace, spec, fault)

        @rule(target=jobs, job=jobs, schedule=st.none() | strategies.schedules(),
              timezone=st.none() | strategies.zones(),
              payload=st.none() | strategies.payloads(), fault=faults)
        def update(
            self, job: JobRef, schedule: str | None, timezone: str | None,
            payload: dict | None, fault: str | None,
        ) -> Any:
            """Update any version, retired ones too (JobNotActive is due then)."""
            change = JobChange(schedule, timezone, payload)
            expectation = self.model.expect_update(job.workspace, job.id, change)
            before = self._view(job.workspace)
            outcome = self._call(
                fault, job.workspace, "schedule",
                lambda conn: self.target.update_job(
                    conn, job.workspace, job.id, change
                ),
            )
            added: list[JobRef] = []

            def apply(new: Job) -> None:
                self.model.updated(job.workspace, job.id, change, new)
                added.append(JobRef(job.workspace, new.id))

            def resolve(after: WorkspaceView) -> Job | None:
                return _successor(after, job)

            self._judge(
                f"update of job {job.id} under {fault}", job.workspace, expectation,
                before, outcome, apply, resolve,
            )
            return added[0] if added else multiple()

        @rule(job=jobs, fault=faults)
        def cancel(self, job: JobRef, fault: str | None) -> None:
            """Cancel any version; cancelling twice must raise JobNotActive."""
            expectation = self.model.expect_cancel(job.workspace, job.id)
            before = self._view(job.workspace)
            outcome = self._call(
                fault, job.workspace, "unschedule",
                lambda conn: self.target.cancel_job(conn, job.workspace, job.id),
            )

            def apply(retired: Job) -> None:
                self.model.cancelled(job.workspace, job.id, retired)

            def resolve(after: WorkspaceView) -> Job | None:
                return _retired(after, job)

            self._judge(
                f"cancel of job {job.id} under {fault}", job.workspace, expectation,
                before, outcome, apply, resolve,
            )

        @precondition(lambda self: CRASH in self.fault_names)
        @rule()
        def crash_server(self) -> None:
            """Crash between operations: every committed job must survive."""
            self._session.close()
            self.server.crash()
            self.server.restart()
            type(self).crashes += 1

        # -- helpers ------------------------------------------------------------

        def _create(
            self, workspace: str, spec: JobSpec, fault: str | None,
        ) -> Any:
            expectation = self.model.expect_create(workspace, spec)
            before = self._view(workspace)
            outcome = self._call(
                fault, workspace, "schedule",
                lambda conn: self.target.create_job(conn, workspace, spec),
            )
            added: list[JobRef] = []

            def apply(job: Job) -> None:
                self.model.created(workspace, spec, job)
                added.append(JobRef(workspace, job.id))

            def resolve(after: WorkspaceView) -> Job | None:
                job = _new_job(before, after, workspace)
                existing = self.model.existing_delayed(workspace, spec)
                if job is None and existing is not None:
                    return _as_job(workspace, existing)  # a repeat inserts nothing
                return job

            self._judge(
                f"create of a {spec.trigger} job under {fault}", workspace,
                expectation, before, outcome, apply, resolve,
            )
            return added[0] if added else multiple()

        def _view(self, workspace: str) -> WorkspaceView:
            return read_view(self.observer, [workspace])[workspace]

        def _schema_exists(self, name: str) -> bool:
            row = self.observer.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", [name]
            ).fetchone()
            return row is not None

        def _namespaces(self) -> tuple[int, int]:
            # pg_temp_N schemas appear when any session first uses a temporary
            # table, so they are not counted.
            row = self.observer.execute(
                "SELECT (SELECT count(*) FROM pg_namespace"
                "        WHERE nspname NOT LIKE 'pg\\_%'),"
                " (SELECT count(*) FROM public.workspaces)"
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

    Machine.__name__ = Machine.__qualname__ = "JobLifecycle"
    Machine.dsn = dsn
    Machine.target = resolved
    Machine.fault_names = points
    Machine.max_workspaces = max_workspaces
    Machine.server = server
    Machine._session = _Session(dsn, server)
    # Keep each target's failing examples apart in Hypothesis's database.
    Machine._hypothesis_internal_add_digest = (  # type: ignore[attr-defined]
        f"kronos:{resolved.name}:{','.join(points)}".encode()
    )
    return Machine


# -- reading an unknown outcome back from the database ---------------------------


def _as_job(workspace: str, row: Any) -> Job:
    return Job(
        workspace=workspace, id=row.id, endpoint_id=row.endpoint_id, name=row.name,
        trigger=row.trigger, status=row.status, cron_expression=row.cron_expression,
        timezone=row.timezone, run_at=row.run_at,
        idempotency_key=row.idempotency_key, payload=row.payload,
        version=row.version, previous_version_id=row.previous_version_id,
        replaced_by_id=row.replaced_by_id,
        created_at=datetime.datetime.now(datetime.timezone.utc), retired_at=None,
    )


def _new_job(before: WorkspaceView, after: WorkspaceView, workspace: str) -> Job | None:
    known = {job.id for job in before.jobs}
    new = [job for job in after.jobs if job.id not in known]
    return _as_job(workspace, new[0]) if len(new) == 1 else None


def _successor(after: WorkspaceView, job: JobRef) -> Job | None:
    new = [row for row in after.jobs if row.previous_version_id == job.id]
    return _as_job(job.workspace, new[0]) if len(new) == 1 else None


def _retired(after: WorkspaceView, job: JobRef) -> Job | None:
    rows = [row for row in after.jobs if row.id == job.id and row.status == "RETIRED"]
    return _as_job(job.workspace, rows[0]) if rows else None
