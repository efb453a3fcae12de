"""``maskwatch dashboard``: serve the Streamlit analytics dashboard."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

APP = Path(__file__).with_name("app.py")


def streamlit_argv(host: str, port: int) -> list[str]:
    """``streamlit run`` headless, without telemetry or file watcher (this is not a dev server)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
    ]


@click.group()
def dashboard() -> None:
    """The analytics dashboard (Streamlit) over the store at MASKWATCH_STORE_URL."""


@dashboard.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535))
def run(host: str, port: int) -> None:
    """Serve the dashboard on http://HOST:PORT (replaces this process with Streamlit)."""
    argv = streamlit_argv(host, port)
    click.echo(f"dashboard: http://{host}:{port}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, so signals (SIGTERM from a supervisor or a test) reach Streamlit itself.
    os.execv(argv[0], argv)
