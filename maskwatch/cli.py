"""The ``maskwatch`` command. Subcommands are grouped by job and imported only when used, so
``maskwatch ticker`` does not pay for loading ONNX Runtime or Streamlit."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

from maskwatch.redact import setup_logging

# name -> "module:attribute" of a click command or group.
COMMANDS: dict[str, str] = {
    "services": "maskwatch.services.cli:services",
    "store": "maskwatch.store_cli:store",
    "cameras": "maskwatch.registry_cli:cameras",
    "ticker": "maskwatch.ticker:ticker_command",
    "models": "inference.cli:models",
    "eval": "inference.cli:eval_command",
    "flow": "flows.cli:flow",
    "dashboard": "dashboards.cli:dashboard",
    "notify": "maskwatch.notify:notify_command",
    "up": "maskwatch.demo:up_command",
    "down": "maskwatch.demo:down_command",
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
