"""``maskwatch services up|down|status`` (the local broker and store) and ``maskwatch up|down`` (the whole
embedded default: services, schema, sample cameras, ticker, flow, dashboard)."""

from __future__ import annotations

from pathlib import Path

import click

from maskwatch.config import DashboardSettings, Settings, settings
from maskwatch.devservices.demo import SAMPLE_CAMERAS, start_apps, stop_apps
from maskwatch.devservices.process import ServiceError
from maskwatch.schemas.redaction import redact_url


@click.group()
def services() -> None:
    """Local services under $MASKWATCH_HOME: Tansu broker (+ SeaweedFS when durable) and the store server."""


@services.command()
@click.option("--durable", is_flag=True,
              help="Keep broker data on disk: run SeaweedFS (S3) and Tansu with s3:// storage.")
@click.option("--broker-port", type=click.IntRange(1, 65535),
              help="Broker port [env MASKWATCH_BROKER_PORT, else the port of MASKWATCH_KAFKA_BOOTSTRAP if "
                   "local, else 19092].")
@click.option("--store-port", type=click.IntRange(1, 65535),
              help="Store server port [env MASKWATCH_STORE_PORT, else the port of MASKWATCH_STORE_URL if "
                   "local, else 18123].")
@click.option("--s3-port", type=click.IntRange(1, 65535),
              help="SeaweedFS S3 port with --durable; it also uses the next 4 ports and each +10000 "
                   "[env MASKWATCH_S3_PORT, default 18333].")
@click.option("--no-topics", is_flag=True, help="Do not create the Kafka topics.")
def up(durable: bool, broker_port: int | None, store_port: int | None, s3_port: int | None,
       no_topics: bool) -> None:
    """Start the services that are not running and create the topics (idempotent)."""
    from maskwatch.devservices import manager
    from maskwatch.devservices.process import ServiceError
    from maskwatch.topics import TopicError

    try:
        for line in manager.up(settings(), durable=durable, broker_port=broker_port, store_port=store_port,
                               s3_port=s3_port, topics=not no_topics):
            click.echo(line)
    except (ServiceError, TopicError) as ex:
        raise click.ClickException(str(ex)) from None


@services.command()
def down() -> None:
    """Stop the services (SIGTERM, then SIGKILL after a timeout); fine when nothing runs."""
    from maskwatch.devservices import manager

    for line in manager.down(settings()):
        click.echo(line)


@services.command()
def status() -> None:
    """Each service with its state (up / unresponsive / down), pid and address; exit 1 if any is not up."""
    from maskwatch.devservices import manager

    rows = manager.status(settings())
    for row in rows:
        click.echo(row.line())
    if any(row.state != "up" for row in rows):
        raise SystemExit(1)


@click.command("up")
@click.option("--cameras", "cameras_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=SAMPLE_CAMERAS, show_default=True, help="Camera YAML to import.")
@click.option("--durable", is_flag=True, help="Keep broker data on disk (see `maskwatch services up`).")
def up_command(cameras_file: Path, durable: bool) -> None:
    """Start everything locally: broker, store, schema, sample cameras, ticker (idempotent)."""
    from maskwatch import store
    from maskwatch.cameras import registry, sites
    from maskwatch.devservices import manager
    from maskwatch.topics import TopicError

    settings = Settings()
    try:
        for line in manager.up(settings, durable=durable):
            click.echo(line)
        settings = Settings()  # again: the store's password may have been made just now
        applied = store.migrate(settings)
        click.echo(f"store: migrations {', '.join(applied) if applied else 'up to date'}")
        sites.import_yaml(cameras_file, settings)
        result = registry.import_yaml(cameras_file, settings)
        click.echo(f"cameras: {cameras_file.name}: {len(result.added)} added, {len(result.updated)} updated, "
                   f"{len(result.unchanged)} unchanged")
        for line in start_apps(settings):
            click.echo(line)
    except (ServiceError, TopicError, store.StoreError, registry.RegistryError) as exc:
        raise click.ClickException(f"{exc}\n(`maskwatch down` stops whatever did start)") from None
    click.echo(
        "\nmaskwatch is up.\n"
        f"  broker   {settings.kafka_bootstrap}\n"
        f"  store    {redact_url(settings.store_url)}\n"
        f"  topics   ticks {settings.topic_ticks}, alerts {settings.topic_alerts}, "
        f"dead letters {settings.topic_dead_letter}\n"
        f"  logs     {settings.home / 'logs'}\n"
        f"  dashboard http://127.0.0.1:{DashboardSettings().port}\n"
        "  watch    maskwatch ticker tail      (ticks as they are emitted)\n"
        "           maskwatch cameras list\n"
        "  stop     maskwatch down"
    )


@click.command("down")
def down_command() -> None:
    """Stop what `maskwatch up` started: the apps, then the services."""
    from maskwatch.devservices import manager

    settings = Settings()
    for line in [*stop_apps(settings), *manager.down(settings)]:
        click.echo(line)
