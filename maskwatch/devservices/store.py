"""The embedded store server (``maskwatch store serve``) as a managed background process."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from maskwatch.config import LOCAL_DASHBOARD_CREDENTIAL, LOCAL_STORE_CREDENTIAL
from maskwatch.devservices.process import ManagedProcess, ServiceError, port_stays_busy

log = logging.getLogger(__name__)

DEFAULT_PORT = 18123


def store_ready(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET {url}/ping`` answers ``Ok.`` as a ClickHouse server does."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/ping", timeout=timeout) as response:
            return bool(response.status == 200 and response.read().startswith(b"Ok."))
    except OSError:
        return False


def _make_secret(path: Path) -> None:
    """A random password in ``path`` (mode 600), unless one is there."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made by a second `services up` at the same moment
        return
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    log.info("store: created a password in %s", path)


@dataclass
class StoreService:
    home: Path
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    data_dir: Path | None = None
    name: str = "store"
    attached: bool = False  # as Broker.attached

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def chdb_dir(self) -> Path:
        return self.data_dir or self.home / "chdb"

    @functools.cached_property
    def process(self) -> ManagedProcess:
        return ManagedProcess(self.name, self.home / "run", self.home / "logs", marker="store serve")

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "maskwatch.cli", "store", "serve", "--host", self.host,
                "--port", str(self.port), "--data-dir", str(self.chdb_dir)]

    def pid(self) -> int | None:
        return self.process.pid()

    def ready(self) -> bool:
        return store_ready(self.url)

    @property
    def credential(self) -> Path:
        return self.home / LOCAL_STORE_CREDENTIAL

    @property
    def dashboard_credential(self) -> Path:
        return self.home / LOCAL_DASHBOARD_CREDENTIAL

    def credential_env(self) -> dict[str, str]:
        """How the server gets its passwords: the ones configured (MASKWATCH_STORE_PASSWORD(_FILE),
        MASKWATCH_STORE_DASHBOARD_PASSWORD(_FILE)), else random ones made once under this home (mode
        600), which every local process then finds (the dashboard's by its user name in the store URL)."""
        env = {}
        for name, path in (("MASKWATCH_STORE_PASSWORD", self.credential),
                           ("MASKWATCH_STORE_DASHBOARD_PASSWORD", self.dashboard_credential)):
            if os.environ.get(name) or os.environ.get(f"{name}_FILE"):
                continue
            _make_secret(path)
            env[f"{name}_FILE"] = str(path)
        return env

    def start(self, timeout: float = 60.0) -> int:
        proc = self.process
        pid = proc.pid()
        if pid is not None:
            return pid
        if port_stays_busy(self.host, self.port):
            raise ServiceError(
                f"store: port {self.port} on {self.host} is already in use by another program; "
                f"choose another with --store-port or MASKWATCH_STORE_PORT"
            )
        pid = proc.start_ready(self.argv(), self.ready, "store server", self.url, timeout,
                               env=self.credential_env(), attached=self.attached)
        log.info("store server ready on %s (pid %d, data %s)", self.url, pid, self.chdb_dir)
        return pid

    def stop(self, timeout: float = 15.0) -> bool:
        return self.process.stop(timeout)
