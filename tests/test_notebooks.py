"""Every notebook runs top to bottom against the test server and asserts its fact.

Each notebook ends with the assertion it exists to show (the legacy control
diverges in the matrix, the replay reaches its divergence, the audit finds
exactly the planted divergences, the search exercised every rule and fault
point), so executing it is the test. The notebooks share the session's server:
its DSN is injected after the ``parameters`` cell, as papermill does. The fault
matrix is the exception on the embedded backend: it starts its own embedded
server, so that its ``server.crash`` cells run (a crash needs the server object,
which a kernel cannot borrow from this process).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPLORED = NOTEBOOK_DIR / "04_what_hypothesis_explored.ipynb"

# Notebook 04 on the positive control: a search that must fail and hand notebook
# 02 a program that reaches the divergence. Seeded to fail fast (about 10 s);
# the examples are a margin, since a failing search stops at its first failure.
LEGACY_SEARCH = {
    "TARGET": "legacy",
    "MAX_EXAMPLES": 200,
    "STEPS": 5,
    "SEED": 2,
    "FAULTS": ["schedule.before", "schedule.after", "unschedule.before",
               "unschedule.after"],
}
RUNS = [
    *[pytest.param(path, {}, id=path.stem) for path in NOTEBOOKS],
    pytest.param(EXPLORED, LEGACY_SEARCH, id=f"{EXPLORED.stem}-legacy"),
]

pytestmark = [
    pytest.mark.slow,
    # jupyter_client and zmq warn about their own internals; not ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


def inject_parameters(book: nbformat.NotebookNode, **values: object) -> None:
    """Add a cell setting ``values`` right after the ``parameters`` cell."""
    index = next(
        i for i, cell in enumerate(book.cells)
        if "parameters" in cell.metadata.get("tags", [])
    )
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    book.cells.insert(index + 1, cell)


@pytest.mark.parametrize("path, parameters", RUNS)
def test_the_notebook_runs_and_asserts_its_fact(
    path, parameters, kronos_dsn, kronos_server
) -> None:
    env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    dsn: str | None = kronos_dsn
    if path.stem.startswith("01") and kronos_server is not None:
        dsn = None
        env.pop("KRONOS_DSN", None)
        env["KRONOS_BACKEND"] = "embedded"

    book = nbformat.read(path, as_version=4)
    inject_parameters(book, DSN=dsn, **parameters)
    client = NotebookClient(
        book,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )

    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{exc}", pytrace=False)

    images = [
        output for cell in book.cells for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    charts = {"01": 1, "03": 1, "04": 1}.get(path.stem[:2], 0)
    assert len(images) >= charts, f"{path.name} rendered {len(images)} chart(s)"
