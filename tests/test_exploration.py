"""The exploration record: the machine's steps, read from Hypothesis's observations.

The positive control's search (it fails, and its counterexample replays to the
divergence) is notebook 04's legacy run in tests/test_notebooks.py.
"""

from __future__ import annotations

import pytest

from kronos.exploration import NO_FAULT, _case, explore
from kronos.statemachine import make_state_machine

PROGRAM = """\
state = JobLifecycle()
state.invariants_hold()
workspaces_0 = state.create_workspace(workspace='0')
state.invariants_hold()
endpoints_0 = state.add_endpoint(workspace=workspaces_0)
state.invariants_hold()
jobs_0 = state.create_cron(endpoint=endpoints_0, fault=None, name='0', \
schedule='@yearly', timezone='UTC')
state.invariants_hold()
state.cancel(fault='unschedule.before', job=jobs_0)
state.invariants_hold()
jobs_1 = state.create_cron(endpoint=endpoints_0, fault='schedule.before', \
name='0', schedule='@yearly', timezone='UTC')
state.teardown()
"""


def test_a_test_case_lists_each_rule_call_with_its_fault_and_share_of_time() -> None:
    observation = {
        "type": "test_case",
        "status": "passed",
        "how_generated": "generated during unknown phase",
        "representation": PROGRAM,
        "timing": {"execute:rule:create_cron": 0.5, "execute:rule:cancel": 0.25,
                   "execute:rule:create_workspace": 0.1,
                   "execute:rule:add_endpoint": 0.1},
    }

    case = _case(7, observation)

    assert [(s["rule"], s["fault"]) for s in case["steps"]] == [
        ("create_workspace", NO_FAULT),
        ("add_endpoint", NO_FAULT),
        ("create_cron", NO_FAULT),
        ("cancel", "unschedule.before"),
        ("create_cron", "schedule.before"),
    ]
    assert case["steps"][2]["seconds"] == pytest.approx(0.25)
    assert {s["test_case"] for s in case["steps"]} == {7}


def test_the_search_reports_the_machines_rules_and_fault_points(kronos_dsn) -> None:
    faults = ["schedule.before", "unschedule.before"]

    exploration = explore(kronos_dsn, "atomic", max_examples=5, steps=4, faults=faults)

    Machine = make_state_machine(kronos_dsn, "atomic", fault_points=faults)
    assert exploration.rules == tuple(Machine.rule_names())
    assert "crash_server" not in exploration.rules
    assert exploration.fault_points == tuple(faults)
    assert exploration.failure is None
    assert set(exploration.steps["rule"]) <= set(exploration.rules)
    Machine.close()
