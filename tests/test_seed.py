"""Seeding a demo database: realistic jobs, and exactly the planted divergences."""

from __future__ import annotations

import pytest

from kronos.checker import KINDS, find_divergences
from kronos.errors import InvalidWorkspace, KronosUsageError
from kronos.seed import seed_demo
from kronos.workspace import drop_workspace


@pytest.fixture
def cleanup(kronos_observer):
    made: list[str] = []
    yield made
    for name in made:
        drop_workspace(kronos_observer, name)


def test_the_checker_finds_exactly_the_planted_divergences(
    kronos_observer, cleanup
) -> None:
    plant = {kind: 2 for kind in KINDS}

    seeded = seed_demo(kronos_observer, workspaces=4, jobs_per_workspace=15,
                       plant=plant, seed=11, prefix="tseed")
    cleanup.extend(seeded.workspaces)

    found = find_divergences(kronos_observer, seeded.workspaces)
    missed, unexpected = seeded.compare(found)
    assert missed.empty and unexpected.empty
    assert found["kind"].value_counts().to_dict() == plant
    assert len(seeded.planted) == 10


def test_a_seed_without_plants_is_in_sync_and_has_every_trigger(
    kronos_observer, cleanup
) -> None:
    seeded = seed_demo(kronos_observer, workspaces=2, jobs_per_workspace=20,
                       plant={}, seed=1, prefix="tclean")
    cleanup.extend(seeded.workspaces)

    assert find_divergences(kronos_observer, seeded.workspaces).empty
    assert set(seeded.jobs["trigger"]) == {"CRON", "IMMEDIATE", "DELAYED"}
    assert set(seeded.jobs["status"]) == {"ACTIVE", "RETIRED"}


def test_the_same_seed_plants_the_same_divergences(kronos_observer, cleanup) -> None:
    first = seed_demo(kronos_observer, seed=5, prefix="tsame")
    second = seed_demo(kronos_observer, seed=5, prefix="tsame", replace=True)
    cleanup.extend(second.workspaces)

    assert first.planted.equals(second.planted)


def test_an_existing_workspace_is_not_dropped_without_replace(
    kronos_observer, cleanup
) -> None:
    seeded = seed_demo(kronos_observer, workspaces=1, plant={}, prefix="texist")
    cleanup.extend(seeded.workspaces)

    with pytest.raises(InvalidWorkspace, match="replace=True"):
        seed_demo(kronos_observer, workspaces=1, plant={}, prefix="texist")


@pytest.mark.parametrize(
    "plant, message",
    [
        ({"lost job": 1}, "known kinds"),
        ({"missing schedule": -1}, ">= 0"),
        ({"missing schedule": 500}, "raise jobs_per_workspace"),
    ],
)
def test_an_impossible_plant_is_refused(kronos_observer, cleanup, plant, message):
    cleanup.extend(["tbad_acme"])
    with pytest.raises(KronosUsageError, match=message):
        seed_demo(kronos_observer, workspaces=1, jobs_per_workspace=3,
                  plant=plant, prefix="tbad", replace=True)
