"""pytest fixtures for verifying a Kronos job lifecycle on a real server.

Installed with the package and loaded through the ``pytest11`` entry point, so
any project's tests can use them without copying code:

* ``kronos_backend``: the :class:`~kronos.backends.Backend` of the session,
  chosen by ``--kronos-backend`` / ``KRONOS_BACKEND`` (``dsn``, ``embedded``,
  the default, or ``testcontainers``) and ``--kronos-dsn`` / ``KRONOS_DSN``;
* ``kronos_dsn``: its DSN, which every other fixture connects to;
* ``kronos_server``: the :class:`~kronos.server.EmbeddedServer` for the
  embedded backend (it can crash and restart), ``None`` for the others;
* ``kronos_observer``: an autocommit connection used only to look;
* ``kronos_workspace``: a fresh workspace per test, dropped afterwards;
* ``kronos_endpoint``: an endpoint in that workspace;
* ``kronos_conn``: an autocommit connection for running operations, on which
  client-side fault points can be armed;
* ``kronos_target``: the target named by ``--kronos-target`` /
  ``KRONOS_TARGET`` (default ``atomic``);
* ``kronos_faults``: a :class:`~fault_injection.FaultInjector`;
* ``kronos_arm``: arm a fault point for the test, disarmed at teardown;
* ``kronos_check``: assert that jobs and cron.job agree, failing with a
  readable divergence report.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from fault_injection import ArmedFault, FaultInjector, FaultyConnection
from kronos.backends import BACKENDS, Backend, resolve_backend
from kronos.checker import assert_in_sync
from kronos.targets import Target, resolve_target
from kronos.workspace import Endpoint, add_endpoint, create_workspace, drop_workspace

__all__: list[str] = []

logger = logging.getLogger(__name__)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kronos", "Kronos job table / pg_cron verification")
    group.addoption(
        "--kronos-backend",
        choices=BACKENDS,
        default=None,
        help="Where the database comes from: dsn, embedded or testcontainers "
        "(env KRONOS_BACKEND; default dsn when a DSN is given, else embedded).",
    )
    group.addoption(
        "--kronos-dsn",
        default=None,
        help="PostgreSQL with pg_cron to test against, for the dsn backend "
        "(env KRONOS_DSN).",
    )
    group.addoption(
        "--kronos-target",
        default=os.environ.get("KRONOS_TARGET", "atomic"),
        help="Target to verify: atomic, legacy or package.module:object "
        "(env KRONOS_TARGET; default atomic).",
    )


class _BackendHolder:
    """Starts the session's backend once, on first need, and remembers a failure.

    The report header starts it, so the versions show before any test runs; a
    backend that cannot start is reported there and raised again by every
    fixture that needs it, so those tests error with the reason, never skip.
    """

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._backend: Backend | None = None
        self._error: Exception | None = None

    def get(self) -> Backend:
        if self._backend is not None:
            return self._backend
        if self._error is not None:
            raise self._error
        try:
            self._backend = resolve_backend(
                self._config.getoption("--kronos-backend"),
                self._config.getoption("--kronos-dsn"),
            )
        except Exception as exc:
            self._error = exc
            raise
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


_HOLDER = pytest.StashKey[_BackendHolder]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_HOLDER] = _BackendHolder(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    holder = config.stash.get(_HOLDER, None)
    if holder is not None:
        holder.close()


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return "kronos backend: " + config.stash[_HOLDER].get().describe()
    except Exception as exc:
        logger.debug("the backend did not start for the header", exc_info=True)
        return f"kronos backend: NOT AVAILABLE: {exc}"


@pytest.fixture(scope="session")
def kronos_backend(request: pytest.FixtureRequest) -> Backend:
    """The session's database backend: kind, DSN, server and pg_cron versions."""
    return request.config.stash[_HOLDER].get()


@pytest.fixture(scope="session")
def kronos_server(kronos_backend: Backend) -> object | None:
    """The embedded server of this session (crash, restart); ``None`` otherwise."""
    return kronos_backend.server


@pytest.fixture(scope="session")
def kronos_dsn(kronos_backend: Backend) -> str:
    """The DSN every other fixture connects to."""
    return kronos_backend.dsn


@pytest.fixture
def kronos_observer(kronos_dsn: str) -> Iterator[psycopg.Connection]:
    """A separate autocommit connection that only looks at what others did."""
    with psycopg.connect(kronos_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def kronos_workspace(kronos_observer: psycopg.Connection) -> Iterator[str]:
    """A fresh workspace schema, dropped with its pg_cron entries afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    create_workspace(kronos_observer, name)
    yield name
    if kronos_observer.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        kronos_observer.rollback()
    drop_workspace(kronos_observer, name)


@pytest.fixture
def kronos_endpoint(
    kronos_observer: psycopg.Connection, kronos_workspace: str
) -> Endpoint:
    """An endpoint in the test's workspace."""
    return add_endpoint(
        kronos_observer, kronos_workspace, "hook", "https://example.test/hook"
    )


@pytest.fixture
def kronos_conn(kronos_dsn: str) -> Iterator[FaultyConnection]:
    """The connection operations run on (autocommit, fault-injectable)."""
    with FaultyConnection.connect(kronos_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def kronos_target(request: pytest.FixtureRequest) -> Target:
    """The target under test, as named on the command line."""
    return resolve_target(request.config.getoption("--kronos-target"))


@pytest.fixture(scope="session")
def kronos_faults(
    kronos_dsn: str, kronos_server: object | None
) -> Iterator[FaultInjector]:
    """A fault injector on the test database (server.crash: embedded only)."""
    injector = FaultInjector(kronos_dsn, server=kronos_server)
    try:
        yield injector
    finally:
        injector.uninstall()
        injector.close()


@pytest.fixture
def kronos_arm(
    kronos_faults: FaultInjector,
) -> Iterator[Callable[..., ArmedFault]]:
    """``kronos_arm(point, occurrence=1, connection=None, at=..., workspace=...)``.

    Disarmed at teardown.
    """
    armed: list[ArmedFault] = []

    def arm(
        point: str,
        occurrence: int = 1,
        connection: FaultyConnection | None = None,
        **options: str,
    ) -> ArmedFault:
        fault = kronos_faults.arm(
            point, occurrence=occurrence, connection=connection, **options
        )
        armed.append(fault)
        return fault

    yield arm
    for fault in armed:
        fault.disarm()


@pytest.fixture
def kronos_check(
    kronos_observer: psycopg.Connection,
) -> Callable[..., None]:
    """``kronos_check(schemas=None)``: fail the test on any divergence."""

    def check(schemas: list[str] | None = None) -> None:
        assert_in_sync(kronos_observer, schemas)

    return check
