"""The three families of errors the toolkit raises, kept apart on purpose.

* :class:`KronosUsageError` and its subclasses: the caller asked for something
  invalid (a bad cron expression, an unknown job, an unknown target). Nothing
  was written.
* :class:`EnvironmentProblem`: the machine or database cannot do what the
  toolkit needs (no PostgreSQL binaries, no pg_cron, a server that did not
  start). The message says what to install or configure.
* :class:`DivergenceError`: the job table and ``cron.job`` disagree. It is an
  ``AssertionError`` so that pytest reports it as a test failure.
"""

from __future__ import annotations


class KronosError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class KronosUsageError(KronosError, ValueError):
    """The caller's input is invalid; nothing was written."""


class InvalidSchedule(KronosUsageError):
    """A cron expression pg_cron would reject or misread."""


class InvalidTimeZone(KronosUsageError):
    """A time zone name that is not in the IANA database."""


class InvalidWorkspace(KronosUsageError):
    """A workspace name that cannot be a schema, or a workspace that is missing."""


class InvalidJob(KronosUsageError):
    """Job data that breaks the lifecycle's rules (missing run_at, and so on)."""


class JobNotFound(KronosUsageError):
    """No job with that id exists in the workspace."""


class EndpointNotFound(KronosUsageError):
    """No endpoint with that id exists in the workspace."""


class JobNotActive(KronosUsageError):
    """The operation needs the ACTIVE version of a job and this one is retired."""


class UnknownTarget(KronosUsageError):
    """A target name that is neither built in nor importable."""


class EnvironmentProblem(KronosError, RuntimeError):
    """The environment lacks something the toolkit needs; the message says what."""


class DivergenceError(KronosError, AssertionError):
    """The job table and ``cron.job`` disagree, or an operation was half applied."""
