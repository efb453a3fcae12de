"""``maskwatch store``: the embedded store server and schema migrations."""

from __future__ import annotations

import click

from maskwatch.config import settings


@click.group()
def store() -> None:
    """The ClickHouse store: serve the embedded engine, apply migrations."""


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
