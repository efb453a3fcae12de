"""Background processes owned by ``maskwatch services``: pid file, log file, readiness, clean stop.

A service is identified by its pid file under ``$MASKWATCH_HOME/run``; a pid file whose process is gone
(or is now some other program) is stale and is removed rather than trusted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from maskwatch.ports import port_in_use
from maskwatch.shutdown import die_with_parent

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message says which and why."""


def port_stays_busy(host: str, port: int, grace: float = 3.0) -> bool:
    """``port_in_use``, allowing ``grace`` seconds for sockets of a just-stopped process to wind down."""
    return not wait_until(lambda: not port_in_use(host, port), grace, interval=0.2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (exited, not yet reaped) is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class ManagedProcess:
    """One daemon: started detached (own session) so it outlives the CLI that started it."""

    name: str
    run_dir: Path
    log_dir: Path
    # A substring of the command line that identifies our program, to tell a live pid from a reused one.
    marker: str

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of our running process, or None; removes a stale pid file."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("%s: unreadable pid file %s removed", self.name, self.pid_file)
            self.pid_file.unlink(missing_ok=True)
            return None
        if pid_alive(pid) and self.marker in _cmdline(pid):
            return pid
        log.info("%s: stale pid file (pid %d not running) removed", self.name, pid)
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(self, argv: Sequence[str], env: Mapping[str, str | None] | None = None,
              cwd: Path | None = None, attached: bool = False) -> int:
        """Start detached (survives this process), or ``attached``: SIGTERMed by the kernel when this
        process dies, so a killed test run leaves no broker behind. ``env`` adds to this process's
        environment (None: leaves that variable out)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=full_env, cwd=cwd, start_new_session=True,
                preexec_fn=die_with_parent() if attached else None,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        # Keep a handle so a process that dies during start-up is reaped, not left a zombie.
        self._popen = proc
        return proc.pid

    def start_ready(self, argv: Sequence[str], ready: Callable[[], bool], what: str, address: str,
                    timeout: float, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                    attached: bool = False, interval: float = 0.2, exited_what: str | None = None) -> int:
        """``start``, then wait until ``ready()`` or the process exits; returns its pid.

        Not ready within ``timeout``: stopped, ServiceError naming ``what`` and ``address``. Exited during
        start-up: ServiceError naming ``exited_what`` (default ``what``) and exit code. Both quote the log.
        """
        pid = self.start(argv, env=env, cwd=cwd, attached=attached)
        if not wait_until(lambda: self.exited() is not None or ready(), timeout, interval=interval):
            self.stop()
            raise ServiceError(f"{what} did not become ready on {address} within {timeout:.0f}s; "
                               f"log {self.log_file}:\n{tail(self.log_file)}")
        if self.exited() is not None:
            self.pid_file.unlink(missing_ok=True)
            raise ServiceError(f"{exited_what or what} exited during start-up (code {self.exited()}); "
                               f"log {self.log_file}:\n{tail(self.log_file)}")
        return pid

    def exited(self) -> int | None:
        """Exit code when the process this object started has already died."""
        proc: subprocess.Popen[bytes] | None = getattr(self, "_popen", None)
        return None if proc is None else proc.poll()

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; True when something was running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        proc: subprocess.Popen[bytes] | None = getattr(self, "_popen", None)
        if not wait_until(lambda: self._gone(pid, proc), timeout):
            log.warning("%s: pid %d ignored SIGTERM for %.0fs; sending SIGKILL", self.name, pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: self._gone(pid, proc), 5.0)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _gone(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
        if proc is not None and proc.pid == pid:
            return proc.poll() is not None
        return not pid_alive(pid)
