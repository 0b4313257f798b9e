"""Replaying a program the state machine printed, up to where the tables part."""

from __future__ import annotations

import pytest

from kronos.errors import KronosUsageError
from kronos.replay import (
    DEFAULT_PROGRAM,
    JOB_COLUMNS,
    parse_steps,
    replay,
    snapshot_frames,
)
from kronos.snapshot import take_snapshot
from kronos.statemachine import ProgramStep

# As a failing run prints it: a report around the program, invariant checks
# between the steps, an update that names its result and a cancel that does not.
PRINTED = """
Falsifying example:
state = JobLifecycle()
state.invariants_hold()
workspaces_0 = state.create_workspace(workspace='replay update')
state.invariants_hold()
endpoints_0 = state.add_endpoint(workspace=workspaces_0)
state.invariants_hold()
jobs_0 = state.create_cron(endpoint=endpoints_0, fault=None, name='r', \
schedule='0 3 * * *', timezone='UTC')
state.invariants_hold()
jobs_1 = state.update(fault=None, job=jobs_0, payload=None, schedule='5 4 * * *', \
timezone=None)
state.invariants_hold()
state.cancel(fault='unschedule.before', job=jobs_1)
state.invariants_hold()
state.teardown()
Explanation:
    These lines were always and only run by failing test cases:
"""


def test_a_printed_program_becomes_its_rule_calls_in_order() -> None:
    steps = parse_steps(PRINTED)

    assert [step.rule for step in steps] == [
        "create_workspace", "add_endpoint", "create_cron", "update", "cancel",
    ]
    assert steps[2].alias == "jobs_0" and steps[2].fault is None
    assert steps[4] == ProgramStep(
        "state.cancel(fault='unschedule.before', job=jobs_1)", "cancel",
        fault="unschedule.before",
    )
    assert steps[4].describe() == "cancel jobs_1 under unschedule.before"


def test_the_default_program_is_the_legacy_counterexample_as_printed() -> None:
    steps = parse_steps(DEFAULT_PROGRAM)

    assert DEFAULT_PROGRAM.startswith("state = JobLifecycle()")
    assert [step.rule for step in steps] == [
        "create_workspace", "add_endpoint", "create_cron",
    ]
    assert steps[-1].fault == "schedule.before"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no steps given"),
        ("state = JobLifecycle()\nstate.teardown()", "found no rule calls"),
        ("create_cron job=j1 schedule='0 3 * * *'", "found no rule calls"),
    ],
)
def test_text_without_rule_calls_is_refused_with_what_to_paste(text, message) -> None:
    with pytest.raises(KronosUsageError, match=message):
        parse_steps(text)


def test_a_call_to_no_rule_of_the_machine_is_refused_before_it_runs() -> None:
    with pytest.raises(KronosUsageError, match="calls no rule.*create_cron"):
        replay("host=unused", "state.crash(signal=9)", "atomic")


def test_legacy_replay_reaches_the_missing_schedule_at_the_create(kronos_dsn) -> None:
    result = replay(kronos_dsn, DEFAULT_PROGRAM, "legacy")

    first = result.first_divergence
    assert first is not None and first is result.steps[-1] and first.number == 3
    assert first.outcome == "ok" and first.fired
    assert list(first.divergences["kind"]) == ["missing schedule"]
    assert "never runs" in first.explanation
    assert first.jobs["status"].tolist() == ["ACTIVE"]
    assert first.cron_jobs.empty
    assert "step 3" in result.explain()
    assert len(result.table()) == 3


def test_atomic_replay_fails_the_create_and_stays_in_sync(kronos_dsn) -> None:
    result = replay(kronos_dsn, DEFAULT_PROGRAM, "atomic")

    assert result.first_divergence is None
    last = result.steps[-1]
    assert last.outcome == "failed" and last.sqlstate == "XX000" and last.fired
    assert last.jobs.empty and last.cron_jobs.empty


def test_an_update_hands_its_new_version_to_the_next_step(kronos_dsn) -> None:
    result = replay(kronos_dsn, PRINTED, "legacy")

    create, update, cancel = result.steps[-3:]
    assert update.job_id != create.job_id
    assert cancel.step.fault == "unschedule.before" and cancel.fired
    assert result.first_divergence is cancel
    assert list(cancel.divergences["kind"]) == ["orphan schedule"]


def test_the_replay_stops_at_the_first_divergence(kronos_dsn) -> None:
    program = DEFAULT_PROGRAM + "state.cancel(fault=None, job=jobs_0)\n"

    result = replay(kronos_dsn, program, "legacy")

    assert [step.number for step in result.steps] == [1, 2, 3]


def test_replay_drops_the_workspaces_it_made(kronos_dsn, kronos_observer) -> None:
    replay(kronos_dsn, DEFAULT_PROGRAM, "legacy")
    replay(kronos_dsn, PRINTED, "atomic")

    schemas = {
        row[0] for row in kronos_observer.execute(
            "SELECT nspname FROM pg_namespace"
        ).fetchall()
    }
    assert not {"0", "replay update"} & schemas


def test_snapshot_frames_name_every_column(kronos_observer, kronos_workspace) -> None:
    jobs, cron = snapshot_frames(take_snapshot(kronos_observer, kronos_workspace))

    assert list(jobs.columns) == ["workspace", *JOB_COLUMNS]
    assert list(cron.columns) == ["jobid", "jobname", "schedule", "command", "active"]


def test_a_fault_with_its_own_connection_strikes_the_step(kronos_dsn) -> None:
    program = PRINTED.replace("fault='unschedule.before'", "fault='connection.drop'")

    result = replay(kronos_dsn, program, "atomic")

    cancel = result.steps[-1]
    assert cancel.fired and cancel.outcome == "failed"
    assert result.first_divergence is None
