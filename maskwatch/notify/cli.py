"""``maskwatch notify``: deliver alerts from the alert topic to chat and webhooks."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from maskwatch import metrics
from maskwatch.config import NotifySettings
from maskwatch.notify.config import NotifyConfigError, host_of, load_config
from maskwatch.notify.service import DeadLetterError, Notifier
from maskwatch.shutdown import stop_on_signals

log = logging.getLogger(__name__)


@click.command("notify")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Destinations YAML [env MASKWATCH_NOTIFY_CONFIG].")
@click.option("--group", "group_id", default=None,
              help="Kafka consumer group [env MASKWATCH_NOTIFY_GROUP, default maskwatch-notify].")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite file of delivered alerts [env MASKWATCH_NOTIFY_STATE, default "
                   "$MASKWATCH_HOME/notify/delivered.sqlite].")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (0: off) [env MASKWATCH_METRICS_PORT].")
@click.option("--check", is_flag=True, help="Validate the config (and its URL secrets) and exit.")
def notify_command(config_path: Path | None, group_id: str | None, state_path: Path | None,
                   metrics_port: int | None, check: bool) -> None:
    """Post alerts from the alert topic to Slack, Teams, Telegram, e-mail and webhooks until SIGTERM."""
    settings = NotifySettings()
    config_path = config_path or settings.config
    if config_path is None:
        raise click.UsageError("give the destinations YAML: --config FILE or MASKWATCH_NOTIFY_CONFIG")
    group_id = group_id or settings.group
    state_path = state_path or settings.state
    try:
        config = load_config(config_path)
    except NotifyConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if check:
        for d in config.destinations:
            click.echo(f"{d.name}: {d.format} -> {host_of(d.resolved_url())}")
        return
    metrics.serve_metrics(metrics_port)
    try:
        Notifier(config, group_id=group_id, state_path=state_path).run(stop_on_signals(log, "alert"))
    except DeadLetterError as exc:  # exit non-zero uncommitted: a restart retries from the last commit
        raise click.ClickException(str(exc)) from None
