"""Tables and charts for the reviewers' notebooks.

The notebooks only call these; the logic that turns a matrix, a replay or an
audit into a picture lives here, where it is tested. matplotlib (a dev extra)
is imported inside the plotting functions so the package works without it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from kronos.checker import KINDS
from kronos.matrix import Cell, MatrixResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from pandas.io.formats.style import Styler

    from kronos.exploration import Exploration
    from kronos.replay import Replay

__all__ = [
    "OUTCOMES",
    "cell_outcome",
    "divergence_summary",
    "matrix_outcomes",
    "plot_divergence_summary",
    "plot_exploration",
    "plot_matrix",
    "side_by_side",
    "style_matrix",
    "style_replay",
]

# Outcome of a matrix cell -> colour, from best to worst.
OUTCOMES: dict[str, str] = {
    "ok, in sync": "#c7e9c0",
    "failed, in sync": "#9ecae1",
    "unknown, in sync": "#fdd0a2",
    "DIVERGED": "#fb6a4a",
    "NOT FIRED": "#bdbdbd",
    "REFUSED": "#f0f0f0",
}


def cell_outcome(cell: Cell) -> str:
    """The cell's outcome as one of :data:`OUTCOMES`."""
    if cell.refused:
        return "REFUSED"
    if cell.harness_problem:
        return "NOT FIRED"
    if cell.diverged:
        return "DIVERGED"
    return f"{cell.outcome}, in sync"


def matrix_outcomes(result: MatrixResult) -> pd.DataFrame:
    """Rows ``operation / fault``, one column per target, values from OUTCOMES."""
    rows: dict[str, dict[str, str]] = {}
    for cell in result.cells:
        rows.setdefault(f"{cell.operation} / {cell.fault}", {})[cell.target] = (
            cell_outcome(cell)
        )
    return pd.DataFrame.from_dict(rows, orient="index")[result.targets]


def style_matrix(result: MatrixResult) -> Styler:
    """The matrix's summary table, each cell coloured by its outcome."""
    table = result.table()

    def colour(text: object) -> str:
        text = str(text)
        for key in ("REFUSED", "NOT FIRED", "DIVERGED"):
            if key in text:
                return f"background-color: {OUTCOMES[key]}"
        first = text.split()[0].rstrip(",") if text else "ok"
        key = f"{first}, in sync" if f"{first}, in sync" in OUTCOMES else "ok, in sync"
        return f"background-color: {OUTCOMES[key]}"

    return table.style.map(colour, subset=result.targets).hide(axis="index")


def plot_matrix(result: MatrixResult, ax: Axes | None = None) -> Axes:
    """A heat map: operation and fault down, target across, coloured by outcome."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    outcomes = matrix_outcomes(result)
    names = list(OUTCOMES)
    codes = outcomes.apply(lambda column: column.map(names.index)).to_numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(2 + 2 * len(outcomes.columns),
                                     0.4 * len(outcomes) + 1.5))

    ax.imshow(codes, cmap=ListedColormap(list(OUTCOMES.values())), vmin=0,
              vmax=len(names) - 1, aspect="auto")
    ax.set_xticks(range(len(outcomes.columns)), outcomes.columns)
    ax.set_yticks(range(len(outcomes.index)), outcomes.index)
    ax.xaxis.tick_top()
    for (row, column), value in pd.DataFrame(outcomes.to_numpy()).stack().items():
        ax.text(column, row, value, ha="center", va="center", fontsize=8)
    ax.legend(
        handles=[Patch(color=c, label=n) for n, c in OUTCOMES.items()],
        loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8,
    )
    ax.set_title("fault matrix: outcome per operation, fault point and target")
    return ax


def side_by_side(
    frames: Sequence[pd.DataFrame | Styler], titles: Sequence[str]
) -> str:
    """HTML showing tables next to each other, each under its title."""
    parts = []
    for frame, title in zip(frames, titles, strict=True):
        body = frame.to_html() if hasattr(frame, "to_html") else str(frame)
        parts.append(
            '<div style="display:inline-block; vertical-align:top; '
            f'margin-right:2em"><h4>{html.escape(title)}</h4>{body}</div>'
        )
    return "<div>" + "".join(parts) + "</div>"


def style_replay(replay: Replay) -> Styler:
    """The replay's step table with the first divergent step highlighted."""
    table = replay.table()
    first = replay.first_divergence
    target_row = None if first is None else first.number - 1

    def highlight(row: pd.Series) -> list[str]:
        style = f"background-color: {OUTCOMES['DIVERGED']}"
        return [style if row.name == target_row else "" for _ in row]

    return table.style.apply(highlight, axis=1).hide(axis="index")


def divergence_summary(
    found: pd.DataFrame, workspaces: Iterable[str] | None = None
) -> pd.DataFrame:
    """Divergences counted per workspace (rows) and kind (columns), with totals.

    Every kind is a column and every workspace in ``workspaces`` a row, even
    at zero, so a clean workspace is visibly clean.
    """
    counts = pd.crosstab(found["workspace"], found["kind"]) if not found.empty else (
        pd.DataFrame()
    )
    rows = sorted(set(workspaces or []) | set(counts.index))
    summary = counts.reindex(index=rows, columns=list(KINDS), fill_value=0)
    summary = summary.fillna(0).astype(int)
    summary.index.name, summary.columns.name = "workspace", "kind"
    summary["total"] = summary.sum(axis=1)
    return summary


def plot_divergence_summary(summary: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """A stacked bar per workspace, one colour per divergence kind."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.5 * len(summary) + 1.5))
    kinds = summary.drop(columns=["total"], errors="ignore")
    kinds.plot.barh(stacked=True, ax=ax, colormap="tab10", width=0.7)
    ax.set_xlabel("divergences")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    ax.set_title("divergences per workspace and kind")
    return ax


def plot_exploration(exploration: Exploration) -> Any:
    """Two panels: steps per rule and fault point, and step durations by rule."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    counts = exploration.rule_counts()
    counts.plot.bar(stacked=True, ax=left, colormap="tab10", rot=0)
    left.set_title("steps run, per rule and fault point")
    left.set_ylabel("steps")
    left.legend(fontsize=8)

    steps = exploration.steps
    rules = sorted(steps["rule"].unique())
    right.boxplot([steps.loc[steps["rule"] == r, "seconds"] * 1000 for r in rules])
    right.set_xticks(range(1, len(rules) + 1), rules)
    right.set_title("time per step, by rule")
    right.set_ylabel("milliseconds")
    figure.tight_layout()
    return figure
