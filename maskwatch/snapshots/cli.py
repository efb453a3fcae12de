"""``maskwatch snapshots``: serve alert snapshots by signed link, and make a link by hand."""

from __future__ import annotations

import logging

import click

from maskwatch.config import Settings, SnapshotLinkSettings
from maskwatch.shutdown import stop_on_signals
from maskwatch.snapshots.links import make_link

log = logging.getLogger(__name__)


@click.group("snapshots")
def snapshots() -> None:
    """Alert snapshots for chat and webhooks: signed, expiring HTTPS links and the server behind them."""


def _key(links: SnapshotLinkSettings) -> bytes:
    if links.key is None:
        raise click.ClickException("set MASKWATCH_SNAPSHOT_LINK_KEY (or _FILE): the links are signed with it")
    return links.key.get_secret_value().encode()


@snapshots.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
def serve(host: str) -> None:
    """Serve MASKWATCH_HOME/snapshots to holders of a valid link on MASKWATCH_SNAPSHOT_LINK_PORT."""
    import threading

    from maskwatch import metrics
    from maskwatch.snapshots.server import SnapshotServer

    links = SnapshotLinkSettings()
    metrics.serve_metrics()  # liveness, like every other job
    tls = (links.tls_cert, links.tls_key) if links.tls_cert and links.tls_key else None
    server = SnapshotServer((host, links.port), Settings().home / "snapshots", _key(links), tls)
    log.info("serving snapshot links on %s://%s:%d", "https" if tls else "http", host, links.port)
    stop = stop_on_signals(log, "snapshot server")

    def stop_serving() -> None:
        stop.wait()
        server.shutdown()

    threading.Thread(target=stop_serving, daemon=True).start()
    server.serve_forever()


@snapshots.command("link")
@click.argument("snapshot", type=click.Path(exists=True, dir_okay=False))
def link(snapshot: str) -> None:
    """Print a signed link to SNAPSHOT (a file under MASKWATCH_HOME/snapshots)."""
    links = SnapshotLinkSettings()
    if not links.base:
        raise click.ClickException("set MASKWATCH_SNAPSHOT_LINK_BASE, the server's public https:// URL")
    made = make_link(links.base, Settings().home / "snapshots", snapshot, _key(links), links.ttl_s)
    if made is None:
        raise click.ClickException(f"{snapshot} is not a snapshot under MASKWATCH_HOME/snapshots")
    click.echo(f"{made[0]}  (until {made[1]:%Y-%m-%d %H:%M} UTC)")
