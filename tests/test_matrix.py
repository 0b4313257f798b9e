"""The fault matrix: atomic never diverges, legacy diverges where it should."""

from __future__ import annotations

import pytest

from fault_injection import POINTS
from kronos.errors import KronosUsageError
from kronos.matrix import run_matrix
from kronos.targets import resolve_target

# Where the pre-fix code leaves the tables apart, and how. In the update, the
# steps of connection.drop, statement.timeout and server.crash strike the
# schedule of the new version, after the old one's unschedule went through.
LEGACY_DIVERGES = {
    ("create_cron", "schedule.before"): {"missing schedule"},
    ("create_cron", "schedule.after"): {"missing schedule"},
    ("update", "schedule.before"): {"missing schedule"},
    ("update", "schedule.after"): {"missing schedule"},
    ("update", "unschedule.before"): {"orphan schedule"},
    ("update", "unschedule.after"): {"orphan schedule"},
    ("cancel", "unschedule.before"): {"orphan schedule"},
    ("cancel", "unschedule.after"): {"orphan schedule"},
    ("create_cron", "connection.drop"): {"missing schedule"},
    ("update", "connection.drop"): {"missing schedule"},
    ("cancel", "connection.drop"): {"orphan schedule"},
    ("create_cron", "lock.timeout"): {"missing schedule"},
    ("update", "lock.timeout"): {"missing schedule", "orphan schedule"},
    ("cancel", "lock.timeout"): {"orphan schedule"},
    ("create_cron", "statement.timeout"): {"missing schedule"},
    ("update", "statement.timeout"): {"missing schedule"},
    ("cancel", "statement.timeout"): {"orphan schedule"},
    ("create_cron", "permission.denied"): {"missing schedule"},
    ("update", "permission.denied"): {"missing schedule", "orphan schedule"},
    ("cancel", "permission.denied"): {"orphan schedule"},
    ("create_cron", "extension.missing"): {"missing schedule"},
}
CRASH_DIVERGES = {
    ("create_cron", "server.crash"): {"missing schedule"},
    ("update", "server.crash"): {"missing schedule"},
    ("cancel", "server.crash"): {"orphan schedule"},
}
QUICK_FAULTS = ["none", *(name for name in POINTS if name != "server.crash")]


@pytest.fixture(scope="module")
def matrix(kronos_dsn):
    targets = [resolve_target("atomic"), resolve_target("legacy")]
    return run_matrix(kronos_dsn, targets, faults=QUICK_FAULTS, seed=3)


def test_every_point_but_the_crash_is_in_the_quick_matrix(matrix) -> None:
    covered = {cell.fault for cell in matrix.cells}
    assert covered == set(QUICK_FAULTS)
    for cell in matrix.cells:
        assert cell.fault == "none" or cell.operation in POINTS[cell.fault].strikes


def test_every_armed_fault_fired_and_says_where(matrix) -> None:
    armed = [cell for cell in matrix.cells if cell.fault != "none"]
    assert armed
    for cell in armed:
        assert cell.fired and cell.where, (cell.operation, cell.fault, cell.target)


def _assert_atomic_holds(cells) -> None:
    for cell in cells:
        where = (cell.operation, cell.fault, cell.summary())
        assert not cell.diverged, where
        if cell.fault == "none":
            assert cell.outcome == "ok", where
        elif cell.fault == "commit.ack_lost":
            assert cell.outcome == "unknown", where
            assert cell.resolved in ("committed", "aborted"), where
        else:
            assert cell.outcome == "failed", where
            expected = POINTS[cell.fault].sqlstate
            if expected is not None:
                assert cell.sqlstate == expected, where


def test_atomic_never_diverges_and_its_outcome_matches_the_database(matrix) -> None:
    _assert_atomic_holds([c for c in matrix.cells if c.target == "atomic"])


def _assert_legacy_diverges(matrix, expected) -> None:
    for (operation, fault), kinds in expected.items():
        cell = matrix.cell(operation, fault, "legacy")
        assert cell.outcome == "ok", ("legacy swallowed the pg_cron error", cell)
        assert kinds <= set(cell.divergences["kind"]), cell.summary()
        assert cell.atomicity, "ok, yet not fully applied"


def test_legacy_diverges_exactly_where_the_pre_fix_code_would(matrix) -> None:
    _assert_legacy_diverges(matrix, LEGACY_DIVERGES)
    for cell in matrix.cells:
        if cell.target == "legacy" and cell.fault in ("none", "commit.before"):
            assert not cell.diverged, (cell.operation, cell.fault)


def test_legacy_under_a_lost_ack_diverges_only_if_the_commit_happened(
    matrix,
) -> None:
    cells = [
        c for c in matrix.cells if c.target == "legacy" and c.fault == "commit.ack_lost"
    ]
    assert len(cells) == 3
    for cell in cells:
        assert cell.outcome == "unknown"
        assert cell.diverged == (cell.resolved == "committed"), cell.summary()


def test_the_verdicts_say_every_target_behaved_as_declared(matrix) -> None:
    verdicts = matrix.verdicts()
    assert verdicts["atomic"][0] and verdicts["legacy"][0]
    assert matrix.ok
    table = matrix.table()
    assert list(table.columns) == ["operation", "fault", "atomic", "legacy"]


def test_crash_cells_are_refused_with_a_note_without_the_server(kronos_dsn) -> None:
    result = run_matrix(kronos_dsn, [resolve_target("atomic")], faults=["server.crash"])
    assert [c.operation for c in result.cells] == ["create_cron", "update", "cancel"]
    for cell in result.cells:
        assert cell.refused and cell.summary().startswith("REFUSED: server.crash")
        assert "EmbeddedServer" in cell.error
    passed, why = result.verdicts()["atomic"]
    assert passed and "3 cell(s) refused" in why


@pytest.mark.slow
def test_server_crash_cells_recover_and_hold_each_target_to_its_outcome(
    kronos_backend,
) -> None:
    if kronos_backend.kind != "embedded":
        pytest.skip(
            f"server.crash needs the embedded backend, not {kronos_backend.kind}"
        )
    targets = [resolve_target("atomic"), resolve_target("legacy")]
    result = run_matrix(
        kronos_backend.dsn,
        targets,
        faults=["server.crash"],
        server=kronos_backend.server,
    )

    assert all(cell.fired and "server crashed" in cell.where for cell in result.cells)
    _assert_atomic_holds([c for c in result.cells if c.target == "atomic"])
    _assert_legacy_diverges(result, CRASH_DIVERGES)
    assert result.ok


def test_a_positive_control_that_never_diverges_fails_the_run(kronos_dsn) -> None:
    """Declared divergent but faults never armed: the verdict must say broken."""
    legacy = resolve_target("legacy")
    result = run_matrix(kronos_dsn, [legacy], faults=["none"])
    assert not result.ok
    assert "harness is broken" in result.verdicts()["legacy"][1]


def test_unknown_fault_or_operation_is_refused(kronos_dsn) -> None:
    with pytest.raises(KronosUsageError, match="unknown fault point"):
        run_matrix(kronos_dsn, [resolve_target("atomic")], faults=["disk.full"])
    with pytest.raises(KronosUsageError, match="unknown operation"):
        run_matrix(kronos_dsn, [resolve_target("atomic")], operations=["delete"])
