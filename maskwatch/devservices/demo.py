"""``maskwatch up`` / ``maskwatch down``: the whole embedded default on one machine.

``up`` starts the local services (broker, store), applies the store migrations, imports the sample
cameras and starts the application processes in the background, each with a pid file in
``$MASKWATCH_HOME/run`` and a log in ``$MASKWATCH_HOME/logs``; ``down`` stops them all. To add a process to
the demo, add one ``App`` line to ``APPS``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from maskwatch.config import Settings
from maskwatch.devservices.process import ManagedProcess, ServiceError, tail

# The checkout this runs from: `maskwatch up` is the embedded default of a source tree (bin/dev up).
REPO_ROOT = Path(__file__).resolve().parents[2]
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
