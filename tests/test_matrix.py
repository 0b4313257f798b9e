"""The fault matrix: atomic never diverges, legacy diverges where it should."""

from __future__ import annotations

import pytest

from kronos.errors import KronosUsageError
from kronos.matrix import run_matrix
from kronos.targets import resolve_target

# Where the pre-fix code leaves the tables apart, and how.
LEGACY_DIVERGES = {
    ("create_cron", "schedule.before"): "missing schedule",
    ("create_cron", "schedule.after"): "missing schedule",
    ("update", "schedule.before"): "missing schedule",
    ("update", "schedule.after"): "missing schedule",
    ("update", "unschedule.before"): "orphan schedule",
    ("update", "unschedule.after"): "orphan schedule",
    ("cancel", "unschedule.before"): "orphan schedule",
    ("cancel", "unschedule.after"): "orphan schedule",
}


@pytest.fixture(scope="module")
def matrix(kronos_dsn):
    return run_matrix(kronos_dsn, [resolve_target("atomic"), resolve_target("legacy")])


def test_every_armed_fault_fired(matrix) -> None:
    armed = [cell for cell in matrix.cells if cell.fault != "none"]
    assert armed and all(cell.fired for cell in armed)


def test_atomic_never_diverges_and_fails_cleanly_under_every_fault(matrix) -> None:
    for cell in matrix.cells:
        if cell.target != "atomic":
            continue
        assert not cell.diverged, (cell.operation, cell.fault, cell.summary())
        expected = "ok" if cell.fault == "none" else "failed"
        assert cell.outcome == expected, (cell.operation, cell.fault, cell.error)


def test_legacy_diverges_exactly_where_the_pre_fix_code_would(matrix) -> None:
    for (operation, fault), kind in LEGACY_DIVERGES.items():
        cell = matrix.cell(operation, fault, "legacy")
        assert cell.outcome == "ok", "legacy swallowed the pg_cron error"
        assert kind in set(cell.divergences["kind"]), cell.summary()
    for cell in matrix.cells:
        if cell.target == "legacy" and cell.fault in ("none", "commit.before"):
            assert not cell.diverged, (cell.operation, cell.fault)


def test_the_verdicts_say_every_target_behaved_as_declared(matrix) -> None:
    verdicts = matrix.verdicts()
    assert verdicts["atomic"][0] and verdicts["legacy"][0]
    assert matrix.ok
    table = matrix.table()
    assert list(table.columns) == ["operation", "fault", "atomic", "legacy"]


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
