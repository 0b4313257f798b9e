"""The repository holds clean notebooks: sources only, no outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
STRIP = "run .venv/bin/python scripts/strip-notebooks.py before committing"


def test_there_are_notebooks_to_check() -> None:
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_committed_notebook_has_no_outputs_or_execution_counts(path) -> None:
    book = nbformat.read(path, as_version=4)

    dirty = [
        index
        for index, cell in enumerate(book.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; {STRIP}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_opens_with_a_tagged_parameters_cell(path) -> None:
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)

    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), (
        f"{path.name}: the first code cell must be tagged 'parameters'"
    )
    assert "DSN = None" in code[0].source
