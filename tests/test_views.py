"""The notebooks' tables: outcomes per matrix cell and divergences per workspace."""

from __future__ import annotations

import pandas as pd

from kronos.checker import COLUMNS, KINDS
from kronos.matrix import Cell, MatrixResult
from kronos.views import divergence_summary, matrix_outcomes


def _cell(target: str, fault: str, outcome: str, kinds: list[str]) -> Cell:
    found = pd.DataFrame([{"kind": kind} for kind in kinds], columns=COLUMNS)
    fired = None if fault == "none" else True
    return Cell("cancel", fault, target, outcome, None, None, fired, found)


def test_each_cell_gets_one_outcome_per_target() -> None:
    result = MatrixResult(
        targets=["atomic", "legacy"],
        cells=[
            _cell("atomic", "none", "ok", []),
            _cell("legacy", "none", "ok", []),
            _cell("atomic", "unschedule.before", "failed", []),
            _cell("legacy", "unschedule.before", "ok", ["orphan schedule"]),
        ],
        positive_controls={"legacy"},
    )

    outcomes = matrix_outcomes(result)

    assert outcomes.loc["cancel / none"].tolist() == ["ok, in sync"] * 2
    assert outcomes.loc["cancel / unschedule.before"].tolist() == [
        "failed, in sync", "DIVERGED",
    ]


def test_the_summary_lists_every_kind_and_every_clean_workspace() -> None:
    found = pd.DataFrame(
        [
            {"workspace": "a", "kind": "orphan schedule"},
            {"workspace": "a", "kind": "orphan schedule"},
            {"workspace": "b", "kind": "inactive entry"},
        ]
    )

    summary = divergence_summary(found, ["a", "b", "clean"])

    assert list(summary.columns) == [*KINDS, "total"]
    assert summary.loc["a", "orphan schedule"] == 2
    assert summary["total"].to_dict() == {"a": 2, "b": 1, "clean": 0}
    assert divergence_summary(found.iloc[0:0], ["x"])["total"].sum() == 0
