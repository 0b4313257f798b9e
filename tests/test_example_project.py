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


def _run_example(*args: str, env: dict[str, str] | None = None) -> str:
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
    assert result.returncode == 0, f"the example project failed:\n{output}"
    return output


def test_the_example_passes_with_the_plugin_from_its_entry_point() -> None:
    output = _run_example()

    assert re.search(rf"\b{EXPECTED_TESTS} passed\b", output), output
    assert "kronos backend: " in output
    assert "failed" not in output


def test_the_example_passes_with_the_plugin_named_on_the_command_line() -> None:
    output = _run_example(
        "-p", "kronos.pytest_plugin", env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    )

    assert re.search(rf"\b{EXPECTED_TESTS} passed\b", output), output
