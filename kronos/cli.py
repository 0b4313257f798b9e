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

from kronos.errors import KronosError

logger = logging.getLogger(__name__)


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    return console


@contextlib.contextmanager
def _database(dsn: str | None, console: Console) -> Iterator[str]:
    """The DSN given, or the DSN of an embedded server started for the run."""
    if dsn:
        yield dsn
        return
    from kronos.server import EmbeddedServer

    with EmbeddedServer() as server:
        console.print(
            f"[dim]embedded PostgreSQL {server.server_version} with pg_cron "
            f"{server.pg_cron_version} on 127.0.0.1:{server.port}[/dim]"
        )
        yield server.dsn


def _backend_line(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        cron = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"
        ).fetchone()
    return f"PostgreSQL {version}, pg_cron {cron[0] if cron else 'not installed'}"


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
@click.option("--dsn", envvar="KRONOS_DSN", help="Use this server, not an embedded one.")
@click.option("--fault", "faults", multiple=True, help="Only these fault points.")
@click.option("--operation", "operations", multiple=True, help="Only these operations.")
def matrix(
    targets: tuple[str, ...],
    dsn: str | None,
    faults: tuple[str, ...],
    operations: tuple[str, ...],
) -> None:
    """Run every operation under every fault point through each target."""
    from fault_injection import OPERATIONS
    from kronos.matrix import NO_FAULT, run_matrix
    from kronos.targets import resolve_target

    console = _console()
    try:
        resolved = [resolve_target(name) for name in targets]
        with _database(dsn, console) as url:
            console.print(f"[dim]backend: {_backend_line(url)}[/dim]")
            result = run_matrix(
                url,
                resolved,
                faults=[NO_FAULT, *faults] if faults else None,
                operations=operations or OPERATIONS,
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
            f"[red]{c}[/red]" if "DIVERGED" in c or "NOT FIRED" in c else c
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
    for column in ("point", "what happens", "mechanism", "strikes", "sqlstate"):
        table.add_column(column)
    for point in POINTS.values():
        table.add_row(
            point.name,
            point.description,
            point.mechanism,
            ", ".join(point.strikes),
            point.sqlstate or "-",
        )
    console.print(table)


@main.command()
@click.option("--dsn", envvar="KRONOS_DSN", required=True, help="Database to audit.")
@click.option("--schema", "schemas", multiple=True, help="Only these workspaces.")
def check(dsn: str, schemas: tuple[str, ...]) -> None:
    """Report every divergence in a database (read-only). Exit 1 if any."""
    from kronos.checker import find_divergences

    console = _console()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            found = find_divergences(conn, schemas or None)
    except (KronosError, psycopg.OperationalError) as exc:
        raise click.ClickException(str(exc)) from exc

    if found.empty:
        console.print("jobs and cron.job agree")
        return
    table = Table(title=f"{len(found)} divergence(s)")
    for column in ("kind", "workspace", "job_id", "jobname", "explanation"):
        table.add_column(column)
    for row in found.itertuples(index=False):
        table.add_row(row.kind, row.workspace, str(row.job_id), row.jobname,
                      row.explanation)
    console.print(table)
    sys.exit(1)
