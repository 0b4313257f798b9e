"""Crash runs: the state machine with the server killed between and inside steps.

``server.crash`` kills the embedded server while an operation is inside its
pg_cron call; the ``crash_server`` rule kills it between operations. After
crash recovery the invariants must hold: every operation that returned is
still there, every one that raised or lost its connection is all there or not
at all. Only the embedded server can be crashed, so these tests need the
``embedded`` backend (the default).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from kronos.statemachine import CRASH, JobLifecycle, make_state_machine
from kronos.targets import Target, is_positive_control

pytestmark = pytest.mark.slow

_POINTS = ["schedule.before", "unschedule.before", "commit.before"]


@pytest.fixture
def crashing_machine(
    kronos_dsn: str, kronos_server: object | None, kronos_target: Target
) -> Iterator[type[JobLifecycle]]:
    if kronos_server is None:
        pytest.skip(
            "crash runs need the embedded server, which the toolkit can kill and "
            "restart; run with --kronos-backend embedded (the default)"
        )
    if is_positive_control(kronos_target):
        pytest.skip(
            f"{kronos_target.name} is a positive control; the state machine "
            "tests show it diverges without a crash"
        )
    Machine = make_state_machine(
        kronos_dsn, kronos_target, fault_points=_POINTS, server=kronos_server,
        crash=True, max_workspaces=2,
    )
    yield Machine
    Machine.close()


def test_crash_points_are_drawn(crashing_machine: type[JobLifecycle]) -> None:
    """The crash run draws the catalogue's server.crash point, not a stand-in."""
    assert CRASH in crashing_machine.fault_names


def test_invariants_hold_after_crash_recovery(
    crashing_machine: type[JobLifecycle], kronos_server: object
) -> None:
    """Sequences with crashes inside and between operations keep the tables agreed."""
    run_state_machine_as_test(
        crashing_machine,
        settings=settings(max_examples=4, stateful_step_count=10),
    )

    assert kronos_server.is_running()  # type: ignore[attr-defined]


def test_a_crash_inside_and_between_operations_keeps_every_outcome(
    crashing_machine: type[JobLifecycle],
) -> None:
    """A fixed sequence: crash inside a create, a cancel and an update, and between."""
    before = crashing_machine.crashes

    crashing_machine.replay(
        """
        state = JobLifecycle()
        w = state.create_workspace(workspace='crash "test" é')
        e = state.add_endpoint(workspace=w)
        j1 = state.create_cron(endpoint=e, fault=None, name='a', schedule='@daily', timezone='UTC')
        j2 = state.create_cron(endpoint=e, fault='server.crash', name='b', schedule='0 3 * * *', timezone='UTC')
        state.crash_server()
        j3 = state.update(job=j1, schedule='*/5 * * * *', timezone=None, payload=None, fault='server.crash')
        state.cancel(job=j1, fault='server.crash')
        j4 = state.create_delayed(endpoint=e, key='k', run_at=datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc), fault=None)
        state.crash_server()
        state.cancel(job=j4, fault=None)
        """  # noqa: E501
    )

    assert crashing_machine.crashes - before == 5
