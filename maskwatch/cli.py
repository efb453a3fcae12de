"""The ``maskwatch`` command. Where commands live: each package's ``cli.py`` holds the commands of that
package, and this module assembles them by name, importing one only when it is used (so ``maskwatch ticker``
does not pay for loading ONNX Runtime or Streamlit). The commands of the shared root modules (``config``)
are here."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

from maskwatch import __version__
from maskwatch.config import LOG_LEVELS, SECTIONS, ConfigError, Settings, effective, variables_markdown
from maskwatch.logs import setup_logging

# name -> "module:attribute" of a click command or group.
COMMANDS: dict[str, str] = {
    "services": "maskwatch.devservices.cli:services",
    "store": "maskwatch.store.cli:store",
    "cameras": "maskwatch.cameras.cli:cameras",
    "sites": "maskwatch.cameras.cli:sites_command",
    "ticker": "maskwatch.cameras.cli:ticker_command",
    "models": "maskwatch.inference.cli:models",
    "eval": "maskwatch.inference.cli:eval_command",
    "flow": "maskwatch.flows.cli:flow",
    "dashboard": "maskwatch.dashboards.cli:dashboard",
    "notify": "maskwatch.notify.cli:notify_command",
    "snapshots": "maskwatch.snapshots.cli:snapshots",
    "up": "maskwatch.devservices.cli:up_command",
    "down": "maskwatch.devservices.cli:down_command",
    "config": "maskwatch.cli:config",
}


class ConfigProblem(click.ClickException):
    """A bad setting: one clear message, exit status 2, no traceback."""

    exit_code = 2


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigProblem(f"configuration: {exc}") from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command: Any = getattr(importlib.import_module(module), attr)
        return command  # type: ignore[no-any-return,unused-ignore]

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="maskwatch")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="Log level [env MASKWATCH_LOG_LEVEL, default INFO].")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="text, or one JSON object per line for log collectors [env MASKWATCH_LOG_FORMAT].")
def main(log_level: str | None, log_format: str | None) -> None:
    """maskwatch: find people without face masks on security cameras, at scale."""
    # Every setting is checked before any command runs, so a bad value stops the process at once with
    # its name instead of deep inside a running job.
    settings = Settings()
    for section in SECTIONS:
        section()
    setup_logging((log_level or settings.log_level).upper(), log_format or settings.log_format)


@click.group()
def config() -> None:
    """The settings every maskwatch process reads (MASKWATCH_* variables)."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: variable -> value.")
def config_show(as_json: bool) -> None:
    """Print the effective settings of this environment, secrets masked, and where each came from."""
    rows = effective()
    if as_json:
        import json

        click.echo(json.dumps({name: value for name, value, _ in rows}, indent=2))
        return
    width = max(len(name) + len(value) for name, value, _ in rows) + 1
    for name, value, source in rows:
        click.echo(f"{name}={value}".ljust(width) + f"  # {source}")


@config.command("vars")
@click.option("--compact", is_flag=True,
              help="Names and defaults only, a paragraph per section (the README's).")
def config_vars(compact: bool) -> None:
    """Print every variable with its default and meaning, as Markdown (docs/configuration.md; with
    --compact, the README's configuration)."""
    click.echo(variables_markdown(compact), nl=False)


if __name__ == "__main__":
    main()
