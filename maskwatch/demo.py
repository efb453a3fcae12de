"""``maskwatch up`` / ``maskwatch down``: the whole embedded default on one machine.

``up`` starts the local services (broker, store), applies the store migrations, imports the sample
cameras and starts the application processes in the background, each with a pid file in
``$MASKWATCH_HOME/run`` and a log in ``$MASKWATCH_HOME/logs``; ``down`` stops them all. To add a process to
the demo, add one ``App`` line to ``APPS``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from maskwatch.config import Settings
from maskwatch.redact import redact_url
from maskwatch.services.process import ManagedProcess, ServiceError, tail

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CAMERAS = REPO_ROOT / "samples" / "cameras.yaml"


@dataclass(frozen=True)
class App:
    """A background process: ``maskwatch <args>``, running until ``maskwatch down``."""

    name: str
    args: tuple[str, ...]

    def process(self, settings: Settings) -> ManagedProcess:
        # The marker tells our live process from an unrelated one that reused the pid.
        return ManagedProcess(self.name, settings.home / "run", settings.home / "logs",
                              marker=" ".join(("-m maskwatch.cli", *self.args)))

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "maskwatch.cli", *self.args]


# Started in this order by `up`, stopped in reverse by `down`.
APPS: list[App] = [
    App("ticker", ("ticker",)),
    App("flow", ("flow", "run")),  # recovery state in $MASKWATCH_HOME/recovery
    App("dashboard", ("dashboard", "run")),  # port: MASKWATCH_DASHBOARD_PORT (default 8501)
]


def start_apps(settings: Settings, startup_s: float = 2.0) -> list[str]:
    """Start the apps that are not running; one that dies within ``startup_s`` is an error with its log."""
    messages = []
    started = []
    for app in APPS:
        proc = app.process(settings)
        pid = proc.pid()
        if pid is not None:
            messages.append(f"{app.name}: already running (pid {pid})")
            continue
        pid = proc.start(app.argv(), cwd=REPO_ROOT)
        started.append((app, proc, pid))
    deadline = time.monotonic() + startup_s
    for app, proc, pid in started:
        while proc.exited() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        code = proc.exited()
        if code is not None:
            proc.pid_file.unlink(missing_ok=True)
            raise ServiceError(f"{app.name} exited during start-up (code {code}); log {proc.log_file}:\n"
                               f"{tail(proc.log_file)}")
        messages.append(f"{app.name}: started (pid {pid}), log {proc.log_file}")
    return messages


def stop_apps(settings: Settings) -> list[str]:
    messages = []
    for app in reversed(APPS):
        stopped = app.process(settings).stop()
        messages.append(f"{app.name}: {'stopped' if stopped else 'not running'}")
    return messages


@click.command("up")
@click.option("--cameras", "cameras_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=SAMPLE_CAMERAS, show_default=True, help="Camera YAML to import.")
@click.option("--durable", is_flag=True, help="Keep broker data on disk (see `maskwatch services up`).")
def up_command(cameras_file: Path, durable: bool) -> None:
    """Start everything locally: broker, store, schema, sample cameras, ticker (idempotent)."""
    from maskwatch import registry, store
    from maskwatch.services import manager
    from maskwatch.services.topics import TopicError

    settings = Settings()
    try:
        for line in manager.up(settings, durable=durable):
            click.echo(line)
        applied = store.migrate(settings)
        click.echo(f"store: migrations {', '.join(applied) if applied else 'up to date'}")
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
        f"  dashboard http://127.0.0.1:{os.environ.get('MASKWATCH_DASHBOARD_PORT', '8501')}\n"
        "  watch    maskwatch ticker tail      (ticks as they are emitted)\n"
        "           maskwatch cameras list\n"
        "  stop     maskwatch down"
    )


@click.command("down")
def down_command() -> None:
    """Stop what `maskwatch up` started: the apps, then the services."""
    from maskwatch.services import manager

    settings = Settings()
    for line in [*stop_apps(settings), *manager.down(settings)]:
        click.echo(line)
