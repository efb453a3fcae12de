"""``maskwatch dashboard``: serve the Streamlit analytics dashboard."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from maskwatch.dashboards.auth import ROLES

APP = Path(__file__).with_name("app.py")


def streamlit_args(host: str, port: int) -> list[str]:
    """``streamlit run`` arguments: headless, no telemetry, no file watcher (this is not a dev server)."""
    return [
        "run", str(APP),
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
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="Port [env MASKWATCH_DASHBOARD_PORT, default 8501].")
def run(host: str, port: int | None) -> None:
    """Serve the dashboard on http://HOST:PORT until SIGINT/SIGTERM."""
    from maskwatch.config import DashboardSettings

    port = port or DashboardSettings().port
    from streamlit.web import cli as streamlit_cli

    from maskwatch.ports import port_in_use

    if port_in_use(host, port):
        raise click.ClickException(f"dashboard: port {host}:{port} is already in use; pick another with "
                                   "--port or MASKWATCH_DASHBOARD_PORT")

    click.echo(f"dashboard: http://{host}:{port}", err=True)
    # In this process (not exec'd), so pid files and `maskwatch down` see the command that was started.
    streamlit_cli.main.main(args=streamlit_args(host, port), prog_name="streamlit")


@dashboard.command("seed")
@click.option("--cameras", "n_cameras", default=12, show_default=True, type=click.IntRange(1, 10000))
@click.option("--days", default=14.0, show_default=True, type=click.FloatRange(0.01, 400))
@click.option("--interval", "interval_s", default=60.0, show_default=True, type=click.FloatRange(0.1, 86400),
              help="Seconds between ticks of each camera.")
@click.option("--dataset", "dataset_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="Face-mask dataset (images/ + annotations/) for annotated alert snapshots.")
def seed_command(n_cameras: int, days: float, interval_s: float, dataset_dir: Path | None) -> None:
    """Fill the store with realistic demo data (cameras cam-001..., frames, detections, alerts, health)."""
    from maskwatch import store
    from maskwatch.config import Settings
    from maskwatch.dashboards.seed import seed

    settings = Settings()
    store.migrate(settings)
    done = seed(settings, n_cameras=n_cameras, days=days, interval_s=interval_s, dataset_dir=dataset_dir)
    click.echo(f"seeded {len(done.camera_ids)} cameras, {done.start:%Y-%m-%d %H:%M} → {done.end:%H:%M} UTC: "
               f"{done.frames:,} frames, {done.detections:,} detections, {done.alerts:,} alerts, "
               f"{done.snapshots} snapshots")


@dashboard.command("adduser")
@click.argument("name")
@click.option("--users-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Users file to create or update [env MASKWATCH_DASHBOARD_USERS_FILE].")
@click.option("--role", type=click.Choice(ROLES), default=None,
              help="viewer reads; operator also manages cameras and acknowledges alerts; admin also allows "
                   "private-network cameras. Default: new users are viewers, existing ones keep their role.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin (for scripts).")
def adduser_command(name: str, users_file: Path | None, role: str | None, password_stdin: bool) -> None:
    """Add user NAME to the dashboard login, or set a new password (asked for; never an argument)."""
    from maskwatch.dashboards.auth import UsersFileError, add_user, load_users
    from maskwatch.dashboards.auth import users_file as configured

    users_file = users_file or configured()
    if users_file is None:
        raise click.UsageError("give the users file: --users-file FILE or MASKWATCH_DASHBOARD_USERS_FILE")

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        new = add_user(users_file, name, password, role)
        role = load_users(users_file)[name].role
    except UsersFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'added' if new else 'updated'} dashboard user {name} ({role}) in {users_file}")
