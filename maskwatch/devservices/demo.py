"""``maskwatch up`` / ``maskwatch down``: the whole embedded default on one machine.

``up`` starts the local services (broker, store), applies the store migrations, imports the sample
cameras and starts the application processes in the background, each with a pid file in
``$MASKWATCH_HOME/run`` and a log in ``$MASKWATCH_HOME/logs``; ``down`` stops them all. To add a process to
the demo, add one ``App`` line to ``APPS``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from maskwatch.config import DASHBOARD_STORE_USER, LOCAL_DASHBOARD_CREDENTIAL, Settings
from maskwatch.devservices.process import ManagedProcess, ServiceError, tail

# The checkout this runs from: `maskwatch up` is the embedded default of a source tree (bin/dev up).
REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CAMERAS = REPO_ROOT / "samples" / "cameras.yaml"
# The labelled set the tuned models are built from (the train split only), beside the checkout.
DATASET = (REPO_ROOT.parent / "shared" / "datasets" / "kaggle-face-mask").resolve()


@dataclass(frozen=True)
class App:
    """A background process: ``maskwatch <args>``, running until ``maskwatch down``."""

    name: str
    args: tuple[str, ...]
    # A job that ends by itself (exit 0 is success, not a failed start), run at a lower CPU priority so
    # the flow keeps serving while it works.
    oneshot: bool = False
    # Runs as the store's read-mostly dashboard user (maskwatch.store.identities), not the store's own.
    dashboard_identity: bool = False

    def env(self, settings: Settings) -> dict[str, str | None]:
        if not self.dashboard_identity:
            return {}
        # The dashboard's password becomes the process's store password: as a value if one is configured,
        # else as the file (configured, or the one `services up` made); the store's own is left out.
        password = os.environ.get("MASKWATCH_STORE_DASHBOARD_PASSWORD")
        path = os.environ.get("MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE") or str(
            settings.home / LOCAL_DASHBOARD_CREDENTIAL)
        return {"MASKWATCH_STORE_URL": with_user(settings.store_url, DASHBOARD_STORE_USER),
                "MASKWATCH_STORE_PASSWORD": password,
                "MASKWATCH_STORE_PASSWORD_FILE": None if password else path}

    def process(self, settings: Settings) -> ManagedProcess:
        # The marker tells our live process from an unrelated one that reused the pid.
        return ManagedProcess(self.name, settings.home / "run", settings.home / "logs",
                              marker=" ".join(("-m maskwatch.cli", *self.args)))

    def argv(self) -> list[str]:
        command = [sys.executable, "-m", "maskwatch.cli", *self.args]
        nice = shutil.which("nice")
        return [nice, "-n", "10", *command] if self.oneshot and nice else command


# Started in this order by `up`, stopped in reverse by `down`. The flow starts on the shipped models
# at once; `tune` builds the tuned ones in the background (minutes, cached) and the flow serves them as
# soon as they are written, without a restart.
APPS: list[App] = [
    App("ticker", ("ticker",)),
    App("flow", ("flow", "run")),  # recovery state in $MASKWATCH_HOME/recovery
    App("dashboard", ("dashboard", "run"), dashboard_identity=True),  # port: MASKWATCH_DASHBOARD_PORT (8501)
    App("tune", ("models", "tune", str(DATASET)), oneshot=True),
]


def with_user(url: str, user: str) -> str:
    """``url`` with ``user`` as its user name (any user name it had replaced)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def wanted_apps() -> list[App]:
    """The apps of this machine: the tuning job only where the labelled set is."""
    return [a for a in APPS if a.name != "tune" or DATASET.is_dir()]


def start_apps(settings: Settings, startup_s: float = 2.0) -> list[str]:
    """Start the apps that are not running; one that dies within ``startup_s`` is an error with its log."""
    messages = []
    started = []
    for app in wanted_apps():
        proc = app.process(settings)
        pid = proc.pid()
        if pid is not None:
            messages.append(f"{app.name}: already running (pid {pid})")
            continue
        pid = proc.start(app.argv(), env=app.env(settings), cwd=REPO_ROOT)
        started.append((app, proc, pid))
    deadline = time.monotonic() + startup_s
    for app, proc, pid in started:
        while proc.exited() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        code = proc.exited()
        if code == 0 and app.oneshot:
            proc.pid_file.unlink(missing_ok=True)
            messages.append(f"{app.name}: done (log {proc.log_file})")
            continue
        if code is not None:
            proc.pid_file.unlink(missing_ok=True)
            raise ServiceError(f"{app.name} exited during start-up (code {code}); log {proc.log_file}:\n"
                               f"{tail(proc.log_file)}")
        what = "started in the background" if app.oneshot else "started"
        messages.append(f"{app.name}: {what} (pid {pid}), log {proc.log_file}")
    return messages


def stop_apps(settings: Settings) -> list[str]:
    messages = []
    for app in reversed(APPS):
        stopped = app.process(settings).stop()
        messages.append(f"{app.name}: {'stopped' if stopped else 'not running'}")
    return messages
