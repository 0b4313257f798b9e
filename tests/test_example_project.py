"""The example project under examples/plugin_user, run as its users would run it.

It is a separate project: its own pyproject.toml, its own target
(``my_jobs:MyTarget``), no conftest.py, and the fixtures only from the
installed plugin. Each run is a fresh pytest process in that folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "plugin_user"
EXPECTED_TESTS = 5


def _run_example(
    *args: str, env: dict[str, str] | None = None, expect_ok: bool = True
) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=EXAMPLE,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    if expect_ok:
        assert result.returncode == 0, f"the example project failed:\n{output}"
    else:
        assert result.returncode == 1, f"the example project should fail:\n{output}"
    return output


def test_the_example_passes_with_the_plugin_from_its_entry_point() -> None:
    output = _run_example()

    assert re.search(rf"\b{EXPECTED_TESTS} passed\b", output), output
    assert re.search(
        r"kronos backend: (dsn|embedded|testcontainers): "
        r"PostgreSQL \d+\.\d+, pg_cron \S+ \(",
        output,
    ), output
    assert "failed" not in output


def test_the_example_passes_with_the_plugin_named_on_the_command_line() -> None:
    output = _run_example(
        "-p", "kronos.pytest_plugin", env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    )

    assert re.search(rf"\b{EXPECTED_TESTS} passed\b", output), output


def test_a_backend_that_cannot_start_errors_every_test_that_needs_it() -> None:
    output = _run_example(
        "-q",
        "-rE",
        env={
            "KRONOS_BACKEND": "dsn",
            "KRONOS_DSN": "host=127.0.0.1 port=1 dbname=app user=app",
        },
        expect_ok=False,
    )

    # One test needs no database (it only resolves the target) and passes.
    assert re.search(rf"\b1 passed, {EXPECTED_TESTS - 1} errors\b", output), output
    assert "cannot connect to app@127.0.0.1:1/app" in output
    assert "skipped" not in output
