"""pytest fixtures for verifying a Kronos job lifecycle on a real server.

Installed with the package and loaded through the ``pytest11`` entry point, so
any project's tests can use them without copying code:

* ``kronos_dsn``: the database (``--kronos-dsn`` / ``KRONOS_DSN``, else an
  embedded server started once per session);
* ``kronos_server``: the :class:`~kronos.server.EmbeddedServer`, or skip-free
  ``None`` when a DSN was given;
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

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from fault_injection import ArmedFault, FaultInjector, FaultyConnection
from kronos.checker import assert_in_sync
from kronos.targets import Target, resolve_target
from kronos.workspace import Endpoint, add_endpoint, create_workspace, drop_workspace

__all__: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kronos", "Kronos job table / pg_cron verification")
    group.addoption(
        "--kronos-dsn",
        default=os.environ.get("KRONOS_DSN"),
        help="PostgreSQL with pg_cron to test against (default: an embedded "
        "server; env KRONOS_DSN).",
    )
    group.addoption(
        "--kronos-target",
        default=os.environ.get("KRONOS_TARGET", "atomic"),
        help="Target to verify: atomic, legacy or package.module:object "
        "(env KRONOS_TARGET; default atomic).",
    )


@pytest.fixture(scope="session")
def kronos_server(request: pytest.FixtureRequest) -> Iterator[object | None]:
    """The embedded server of this session, or ``None`` when a DSN was given."""
    if request.config.getoption("--kronos-dsn"):
        yield None
        return
    from kronos.server import EmbeddedServer

    server = EmbeddedServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kronos_dsn(request: pytest.FixtureRequest, kronos_server: object | None) -> str:
    """The DSN every other fixture connects to."""
    given = request.config.getoption("--kronos-dsn")
    if given:
        return str(given)
    return kronos_server.dsn  # type: ignore[union-attr]


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
def kronos_faults(kronos_dsn: str) -> Iterator[FaultInjector]:
    """A fault injector on the test database."""
    injector = FaultInjector(kronos_dsn)
    try:
        yield injector
    finally:
        injector.uninstall()
        injector.close()


@pytest.fixture
def kronos_arm(
    kronos_faults: FaultInjector,
) -> Iterator[Callable[..., ArmedFault]]:
    """``kronos_arm(point, occurrence=1, connection=None)``: disarmed at teardown."""
    armed: list[ArmedFault] = []

    def arm(
        point: str, occurrence: int = 1, connection: FaultyConnection | None = None
    ) -> ArmedFault:
        fault = kronos_faults.arm(point, occurrence=occurrence, connection=connection)
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
