"""Replaying a sequence: parsing, aliases, and reaching the divergence."""

from __future__ import annotations

import pytest

from kronos.errors import KronosUsageError
from kronos.replay import (
    DEFAULT_STEPS,
    JOB_COLUMNS,
    Step,
    parse_steps,
    replay,
    snapshot_frames,
    with_setup,
)
from kronos.snapshot import take_snapshot

HYPOTHESIS_PROGRAM = """
Falsifying example:
state = KronosMachine()
jobs_0 = state.create_cron_job(cron_expression='0 3 * * *', fault='none')
state.in_sync()
jobs_1 = state.update(job=jobs_0, schedule='5 4 * * *', fault='none')
state.cancel(job=jobs_1, fault='unschedule.before')
state.teardown()
"""


def test_json_and_plain_lines_give_the_same_steps() -> None:
    from_json = parse_steps(
        '[{"op": "create_cron", "job": "j1", "schedule": "0 3 * * *"},'
        ' {"op": "cancel", "job": "j1", "fault": "unschedule.before"}]'
    )
    from_lines = parse_steps(
        "create_cron job=j1 schedule='0 3 * * *'\n"
        "# a comment\n"
        "cancel job=j1 fault=unschedule.before\n"
    )
    assert from_json == from_lines
    assert from_json[1] == Step("cancel", job="j1", fault="unschedule.before")


def test_a_step_survives_a_round_trip_through_its_dict() -> None:
    for step in DEFAULT_STEPS:
        assert Step.from_dict(step.to_dict()) == step


def test_a_hypothesis_program_becomes_steps_with_bundle_names_as_aliases() -> None:
    steps = parse_steps(HYPOTHESIS_PROGRAM)

    assert [step.op for step in steps] == ["create_cron", "update", "cancel"]
    assert steps[0] == Step("create_cron", job="jobs_0", schedule="0 3 * * *")
    assert steps[1].job == "jobs_0" and steps[1].alias == "jobs_1"
    assert steps[2].fault == "unschedule.before"


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"op": "explode"}]', "unknown operation"),
        ('[{"op": "cancel", "jobb": "j1"}]', "unknown step key"),
        ("cancel j1", "not key=value"),
        ("state.crash(signal=9)", "no replay equivalent"),
        ("", "no steps given"),
    ],
)
def test_a_malformed_sequence_is_refused_with_what_to_write(text, message) -> None:
    with pytest.raises(KronosUsageError, match=message):
        parse_steps(text)


def test_a_sequence_naming_an_unknown_job_is_refused_before_it_runs() -> None:
    steps = with_setup([Step("cancel", job="ghost")])
    with pytest.raises(KronosUsageError, match="never created"):
        replay("host=unused", steps, "atomic")


def test_a_fault_that_cannot_strike_the_operation_is_refused() -> None:
    steps = with_setup([Step("create_cron", job="j", schedule="0 3 * * *",
                             fault="unschedule.before")])
    with pytest.raises(KronosUsageError, match="never strikes create_cron"):
        replay("host=unused", steps, "atomic")


def test_legacy_replay_reaches_the_orphan_schedule_at_the_cancel(kronos_dsn) -> None:
    result = replay(kronos_dsn, DEFAULT_STEPS, "legacy")

    first = result.first_divergence
    assert first is not None and first.number == 4
    assert first.outcome == "ok" and first.fired
    assert list(first.divergences["kind"]) == ["orphan schedule"]
    assert "RETIRED" in first.explanation
    assert first.jobs["status"].tolist() == ["RETIRED"]
    assert len(first.cron_jobs) == 1
    assert "step 4" in result.explain()
    assert len(result.table()) == len(DEFAULT_STEPS)


def test_atomic_replay_fails_the_cancel_and_stays_in_sync(kronos_dsn) -> None:
    result = replay(kronos_dsn, DEFAULT_STEPS, "atomic")

    assert result.first_divergence is None
    last = result.steps[-1]
    assert last.outcome == "failed" and last.sqlstate == "XX000"
    assert last.atomicity == ()
    assert last.jobs["status"].tolist() == ["ACTIVE"]


def test_an_update_moves_the_alias_to_the_new_version(kronos_dsn) -> None:
    steps = with_setup(parse_steps(HYPOTHESIS_PROGRAM))

    result = replay(kronos_dsn, steps, "legacy")

    update, cancel = result.steps[-2], result.steps[-1]
    assert update.job_id != result.steps[-3].job_id
    assert cancel.job_id == update.job_id
    assert result.first_divergence is cancel


def test_replay_drops_its_workspaces_unless_asked_to_keep_them(
    kronos_dsn, kronos_observer
) -> None:
    dropped = replay(kronos_dsn, DEFAULT_STEPS[:2], "atomic")
    kept = replay(kronos_dsn, DEFAULT_STEPS[:2], "atomic", keep_workspaces=True)

    schemas = {
        row[0] for row in kronos_observer.execute(
            "SELECT nspname FROM pg_namespace"
        ).fetchall()
    }
    assert dropped.workspaces["w"] not in schemas
    assert kept.workspaces["w"] in schemas
    from kronos.workspace import drop_workspace

    drop_workspace(kronos_observer, kept.workspaces["w"])


def test_snapshot_frames_name_every_column(kronos_observer, kronos_workspace) -> None:
    jobs, cron = snapshot_frames(take_snapshot(kronos_observer, kronos_workspace))

    assert list(jobs.columns) == ["workspace", *JOB_COLUMNS]
    assert list(cron.columns) == ["jobid", "jobname", "schedule", "command", "active"]


def test_a_fault_the_replay_cannot_reproduce_is_refused_with_where_to_look() -> None:
    steps = with_setup([Step("create_cron", job="j", schedule="0 3 * * *",
                             fault="server.crash")])
    with pytest.raises(KronosUsageError, match="the fault matrix covers it"):
        replay("host=unused", steps, "atomic")


def test_a_fault_with_its_own_connection_strikes_the_step(kronos_dsn) -> None:
    steps = with_setup([
        Step("create_cron", job="j1", schedule="0 3 * * *"),
        Step("cancel", job="j1", fault="connection.drop"),
    ])

    result = replay(kronos_dsn, steps, "atomic")

    cancel = result.steps[-1]
    assert cancel.fired and cancel.outcome == "failed"
    assert result.first_divergence is None
