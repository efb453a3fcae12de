"""The ``maskwatch`` command. Subcommands are grouped by job and imported only when used, so
``maskwatch ticker`` does not pay for loading ONNX Runtime or Streamlit."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

from maskwatch.logs import setup_logging

# name -> "module:attribute" of a click command or group.
COMMANDS: dict[str, str] = {
    "services": "maskwatch.devservices.cli:services",
    "store": "maskwatch.store.cli:store",
    "cameras": "maskwatch.cameras.cli:cameras",
    "ticker": "maskwatch.cameras.cli:ticker_command",
    "models": "maskwatch.inference.cli:models",
    "eval": "maskwatch.inference.cli:eval_command",
    "flow": "maskwatch.flows.cli:flow",
    "dashboard": "maskwatch.dashboards.cli:dashboard",
    "notify": "maskwatch.notify.cli:notify_command",
    "up": "maskwatch.devservices.cli:up_command",
    "down": "maskwatch.devservices.cli:down_command",
}


class LazyGroup(click.Group):
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
@click.option("--log-level", default="INFO", show_default=True, envvar="MASKWATCH_LOG_LEVEL")
def main(log_level: str) -> None:
    """maskwatch: find people without face masks on security cameras, at scale."""
    setup_logging(log_level)


if __name__ == "__main__":
    main()
