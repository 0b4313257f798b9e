"""The ``kronos-atomicity`` command line."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import click
import psycopg
from rich.console import Console
from rich.table import Table

from kronos.backends import BACKENDS
from kronos.errors import KronosError

logger = logging.getLogger(__name__)


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    return console


@contextlib.contextmanager
def _database(backend: str | None, dsn: str | None, console: Console) -> Iterator[str]:
    """The DSN of the chosen backend (kronos.backends), with its line printed."""
    from kronos.backends import resolve_backend

    with resolve_backend(backend, dsn) as chosen:
        console.print(f"[dim]backend {chosen.describe()}[/dim]")
        yield chosen.dsn


@click.group()
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Prove that a Kronos job table and pg_cron's cron.job never diverge."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:
        # The legacy target logs every swallowed error by design; keep the
        # matrix output readable unless the user asks for more.
        logging.getLogger("kronos.targets.legacy").setLevel(logging.ERROR)


@main.command()
@click.option(
    "--target",
    "targets",
    multiple=True,
    default=("atomic", "legacy"),
    show_default=True,
    help="atomic, legacy or package.module:object; repeat for several.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    envvar="KRONOS_BACKEND",
    help="dsn, embedded or testcontainers [default: dsn with --dsn, else embedded].",
)
@click.option("--dsn", envvar="KRONOS_DSN", help="Use this server (dsn backend).")
@click.option("--fault", "faults", multiple=True, help="Only these fault points.")
@click.option("--operation", "operations", multiple=True, help="Only these operations.")
def matrix(
    targets: tuple[str, ...],
    backend: str | None,
    dsn: str | None,
    faults: tuple[str, ...],
    operations: tuple[str, ...],
) -> None:
    """Run every operation under every fault point through each target."""
    from fault_injection import OPERATIONS
    from kronos.matrix import NO_FAULT, check_choices, run_matrix
    from kronos.targets import resolve_target

    console = _console()
    try:
        resolved = [resolve_target(name) for name in targets]
        check_choices(faults, operations)
        # Not _database(): server.crash needs the embedded server itself.
        from kronos.backends import resolve_backend

        with resolve_backend(backend, dsn) as chosen:
            console.print(f"[dim]backend {chosen.describe()}[/dim]")
            result = run_matrix(
                chosen.dsn,
                resolved,
                faults=[NO_FAULT, *faults] if faults else None,
                operations=operations or OPERATIONS,
                server=chosen.server,
            )
    except KronosError as exc:
        raise click.ClickException(str(exc)) from exc

    table = Table(title="fault matrix: outcome and divergence per target")
    table.add_column("operation")
    table.add_column("fault")
    for name in result.targets:
        table.add_column(name)
    for row in result.table().itertuples(index=False):
        cells = [str(value) for value in row]
        styled = [
            f"[red]{c}[/red]"
            if "DIVERGED" in c or "NOT FIRED" in c
            else f"[yellow]{c}[/yellow]"
            if c.startswith("REFUSED")
            else c
            for c in cells[2:]
        ]
        table.add_row(cells[0], cells[1], *styled)
    console.print(table)

    for name, (passed, why) in result.verdicts().items():
        mark = "[green]PASS[/green]" if passed else "[red]FAIL[/red]"
        console.print(f"{mark} {name}: {why}")
    if result.ok:
        console.print("every target behaved as declared")
    else:
        console.print("[red]some target did not behave as declared[/red]")
        sys.exit(1)


@main.command()
def faults() -> None:
    """List every fault point with what it does and how it is fired."""
    from fault_injection import POINTS

    console = _console()
    table = Table(title="fault points")
    columns = ("point", "what happens", "mechanism", "strikes", "steps", "sqlstate")
    for column in columns:
        table.add_column(column)
    for point in POINTS.values():
        table.add_row(
            point.name,
            point.description,
            point.mechanism,
            ", ".join(point.strikes),
            ", ".join(point.steps) or "-",
            point.sqlstate or "-",
        )
    console.print(table)


@main.command()
@click.option("--dsn", envvar="KRONOS_DSN", required=True, help="Database to audit.")
@click.option("--schema", "schemas", multiple=True, help="Only these workspaces.")
def check(dsn: str, schemas: tuple[str, ...]) -> None:
    """Report every divergence in a database (read-only). Exit 1 if any."""
    from kronos.backends import resolve_backend
    from kronos.checker import find_divergences

    console = _console()
    try:
        # Read-only: check pg_cron is there, but do not probe scheduling rights.
        with resolve_backend("dsn", dsn, manage=False) as backend:
            console.print(f"[dim]backend {backend.describe()}[/dim]")
        with psycopg.connect(dsn, autocommit=True) as conn:
            found = find_divergences(conn, schemas or None)
    except (KronosError, psycopg.Error) as exc:
        raise click.ClickException(str(exc).strip()) from exc

    partial = found.attrs.get("partial_view")
    if partial:
        console.print(f"[yellow]warning: {partial}[/yellow]")
    if found.empty:
        console.print("jobs and cron.job agree")
        return
    table = Table(title=f"{len(found)} divergence(s)")
    for column in ("kind", "workspace", "job_id", "jobname", "explanation"):
        table.add_column(column)
    for row in found.itertuples(index=False):
        table.add_row(
            row.kind, row.workspace, str(row.job_id), row.jobname, row.explanation
        )
    console.print(table)
    sys.exit(1)


@main.command()
@click.option("--dsn", envvar="KRONOS_DSN", help="Use this server (default: embedded).")
@click.option("--port", type=int, default=8888, show_default=True, help="Lab port.")
@click.argument("directory", default="notebooks")
def lab(dsn: str | None, port: int, directory: str) -> None:
    """Open JupyterLab on the notebooks, with a database ready in KRONOS_DSN.

    The server lives as long as JupyterLab does; the notebooks read its DSN
    from the environment, so they run unchanged.
    """
    import os
    import subprocess

    console = _console()
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        directory,
        "--no-browser",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")  # Jupyter refuses root without it
    try:
        with _database(None, dsn, console) as url:
            console.print(f"KRONOS_DSN={url}")
            env = {**os.environ, "KRONOS_DSN": url}
            subprocess.run(command, env=env, check=False)
    except KronosError as exc:
        raise click.ClickException(str(exc)) from exc
    except FileNotFoundError as exc:
        raise click.ClickException(
            f"cannot start JupyterLab ({exc}); install the dev extra: "
            "pip install -e '.[dev]'"
        ) from exc
