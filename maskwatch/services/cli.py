"""``maskwatch services up|down|status``: the embedded default's broker and store on this machine."""

from __future__ import annotations

import click

from maskwatch.config import settings


@click.group()
def services() -> None:
    """Local services under $MASKWATCH_HOME: Tansu broker (+ SeaweedFS when durable) and the store server."""


@services.command()
@click.option("--durable", is_flag=True,
              help="Keep broker data on disk: run SeaweedFS (S3) and Tansu with s3:// storage.")
@click.option("--broker-port", type=int, envvar="MASKWATCH_BROKER_PORT",
              help="Broker port [default: the port of MASKWATCH_KAFKA_BOOTSTRAP if local, else 19092].")
@click.option("--store-port", type=int, envvar="MASKWATCH_STORE_PORT",
              help="Store server port [default: the port of MASKWATCH_STORE_URL if local, else 18123].")
@click.option("--s3-port", type=int, envvar="MASKWATCH_S3_PORT",
              help="SeaweedFS S3 port with --durable; it also uses the next 4 ports and each +10000 "
                   "[default: 18333].")
@click.option("--no-topics", is_flag=True, help="Do not create the Kafka topics.")
def up(durable: bool, broker_port: int | None, store_port: int | None, s3_port: int | None,
       no_topics: bool) -> None:
    """Start the services that are not running and create the topics (idempotent)."""
    from maskwatch.services import manager
    from maskwatch.services.process import ServiceError
    from maskwatch.services.topics import TopicError

    try:
        for line in manager.up(settings(), durable=durable, broker_port=broker_port, store_port=store_port,
                               s3_port=s3_port, topics=not no_topics):
            click.echo(line)
    except (ServiceError, TopicError) as ex:
        raise click.ClickException(str(ex)) from None


@services.command()
def down() -> None:
    """Stop the services (SIGTERM, then SIGKILL after a timeout); fine when nothing runs."""
    from maskwatch.services import manager

    for line in manager.down(settings()):
        click.echo(line)


@services.command()
def status() -> None:
    """Each service with its state (up / unresponsive / down), pid and address; exit 1 if any is not up."""
    from maskwatch.services import manager

    rows = manager.status(settings())
    for row in rows:
        click.echo(row.line())
    if any(row.state != "up" for row in rows):
        raise SystemExit(1)
