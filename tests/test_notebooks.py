"""Every notebook runs top to bottom against the test server and asserts its fact.

Each notebook ends with the assertion it exists to show (the legacy control
diverges in the matrix, the replay reaches its divergence, the audit finds
exactly the planted divergences, the search exercised every rule and fault
point), so executing it is the test. All notebooks share the session's server:
its DSN is injected after the ``parameters`` cell, as papermill does.
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_runs_and_asserts_its_fact(path, kronos_dsn) -> None:
    book = nbformat.read(path, as_version=4)
    inject_parameters(book, DSN=kronos_dsn)
    client = NotebookClient(
        book,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )

    env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
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
