"""Kronos atomicity toolkit: the job lifecycle, its pg_cron registration, and
the checks that prove ``jobs`` and ``cron.job`` never diverge."""

from __future__ import annotations

import logging

from kronos.checker import KINDS, assert_in_sync, find_divergences, format_report
from kronos.errors import (
    DivergenceError,
    EnvironmentProblem,
    KronosError,
    KronosUsageError,
)
from kronos.jobs import Job, JobChange, JobSpec, get_job, list_versions
from kronos.targets import Target, resolve_target
from kronos.workspace import (
    Endpoint,
    add_endpoint,
    create_workspace,
    drop_workspace,
    list_workspaces,
)

__all__ = [
    "KINDS",
    "DivergenceError",
    "Endpoint",
    "EnvironmentProblem",
    "Job",
    "JobChange",
    "JobSpec",
    "KronosError",
    "KronosUsageError",
    "Target",
    "add_endpoint",
    "assert_in_sync",
    "create_workspace",
    "drop_workspace",
    "find_divergences",
    "format_report",
    "get_job",
    "list_versions",
    "list_workspaces",
    "resolve_target",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
