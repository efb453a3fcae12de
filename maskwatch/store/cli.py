"""``maskwatch store``: the embedded store server and schema migrations."""

from __future__ import annotations

import click

from maskwatch.config import settings
from maskwatch.schemas.redaction import redact_text


@click.group()
def store() -> None:
    """The ClickHouse store: serve the embedded engine, apply migrations, change retention."""


@store.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=18123, show_default=True, type=int)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="chdb data directory (default: $MASKWATCH_HOME/chdb).")
def serve(host: str, port: int, data_dir: str | None) -> None:
    """Expose the in-process chdb engine over the ClickHouse HTTP interface (embedded default only)."""
    from maskwatch.store.server import serve as run_server

    run_server(host=host, port=port, data_dir=data_dir or str(settings().home / "chdb"))


@store.command()
def migrate() -> None:
    """Apply the schema migrations to the store at MASKWATCH_STORE_URL (idempotent)."""
    from maskwatch.store import StoreError
    from maskwatch.store import migrate as apply

    try:
        applied = apply()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")


@store.command()
@click.option("--frames", type=int, help="Days frames are kept.")
@click.option("--detections", type=int, help="Days detections (faces) are kept.")
@click.option("--alerts", type=int, help="Days alerts are kept.")
@click.option("--camera-health", type=int, help="Days camera health rows and changes are kept.")
@click.option("--rollup-hourly", type=int, help="Days the hourly compliance rollups are kept.")
@click.option("--rollup-daily", type=int, help="Days the daily compliance rollups are kept.")
@click.option("--from-env", is_flag=True, help="Set every table to its MASKWATCH_TTL_DAYS_<TABLE> value.")
def ttl(from_env: bool, **days: int | None) -> None:
    """Change how long an existing store keeps rows (migrations read MASKWATCH_TTL_DAYS_* only when they
    create a table). With no option, print the TTLs in force."""
    from maskwatch.config import Retention
    from maskwatch.store import StoreError
    from maskwatch.store.retention import current_ttls, set_ttls

    wanted: dict[str, int] = {k: int(v) for k, v in days.items() if v is not None}
    if from_env:
        wanted = {**Retention().model_dump(), **wanted}
    try:
        if wanted:
            for table, kept in set_ttls(wanted).items():
                click.echo(f"{table}: rows kept {kept} days")
            return
        for table, now in current_ttls().items():
            click.echo(f"{table}: {f'{now} days' if now else 'no TTL (or no such table)'}")
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@store.command("grant-dashboard")
@click.option("--print", "print_only", is_flag=True,
              help="Print the SQL (password masked) instead of running it.")
def grant_dashboard(print_only: bool) -> None:
    """Create or update the dashboard's read-mostly user (maskwatch_dashboard) on a ClickHouse server:
    it reads what the dashboard shows, writes acknowledgements and camera/site edits, and can neither
    change the schema nor read camera sources. Its password: MASKWATCH_STORE_DASHBOARD_PASSWORD(_FILE).
    Run by the migrate job of docker/ and docker/k8s/ with the store's own (admin) user; the embedded
    store serves this user by itself."""
    from maskwatch.store import StoreError, client, database_name
    from maskwatch.store.identities import DASHBOARD_USER, grant_statements

    current = settings()
    database = database_name(current)
    if print_only:
        click.echo(";\n".join(grant_statements(database, "***")) + ";")
        return
    password = current.store_dashboard_password_value()
    if not password:
        raise click.ClickException("no dashboard password: set MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE "
                                   "(or MASKWATCH_STORE_DASHBOARD_PASSWORD)")
    try:
        db = client(current)
        for statement in grant_statements(database, password):
            db.command(statement)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # the server's refusal (no access management for this user, ...)
        raise click.ClickException(f"cannot set up {DASHBOARD_USER}: {redact_text(str(exc))}") from None
    click.echo(f"store user {DASHBOARD_USER}: can read what the dashboard shows in {database}, "
               "write acknowledgements and camera/site edits")
