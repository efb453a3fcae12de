"""Start, stop and inspect the embedded default's services under ``$MASKWATCH_HOME``.

The services: the Tansu broker (memory storage, or S3 on a local SeaweedFS with ``durable=True``) and the
store server. What ``up`` chose (ports, mode) is written to ``run/services.json`` so ``status`` and
``down`` address the same processes whatever the environment says later.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from maskwatch.config import DevServicesSettings, Settings
from maskwatch.devservices import broker as broker_mod
from maskwatch.devservices import seaweed as seaweed_mod
from maskwatch.devservices import store as store_service
from maskwatch.devservices.broker import Broker
from maskwatch.devservices.process import ServiceError
from maskwatch.devservices.seaweed import Seaweed
from maskwatch.devservices.store import StoreService
from maskwatch.topics import ensure_topics

log = logging.getLogger(__name__)

_LOCAL_HOSTS = {"127.0.0.1", "localhost"}
Service = Broker | StoreService | Seaweed


@dataclass(frozen=True)
class Layout:
    """Which ports and storage mode the services use."""

    broker_port: int
    store_port: int
    s3_port: int
    durable: bool = False

    def broker(self, home: Path, seaweed: Seaweed | None = None) -> Broker:
        """The broker; pass ``seaweed`` to start it (durable mode needs that store's S3 credentials)."""
        if self.durable:
            return Broker(home, port=self.broker_port, storage=f"s3://{seaweed_mod.BUCKET}/",
                          env=seaweed.client_env() if seaweed else {})
        return Broker(home, port=self.broker_port)

    def seaweed(self, home: Path) -> Seaweed:
        return Seaweed(home, s3_port=self.s3_port)

    def store(self, home: Path) -> StoreService:
        return StoreService(home, port=self.store_port, data_dir=home / "chdb")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    # "up" (process alive and answering), "unresponsive" (alive, not answering), "down".
    state: str

    def line(self) -> str:
        pid = str(self.pid) if self.pid is not None else "-"
        return f"{self.name:<8} {self.state:<12} pid {pid:<8} {self.address}"


def _local_port(address: str) -> int | None:
    """The port of a 127.0.0.1/localhost address (``host:port`` or URL); None for anything remote."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        return None
    return port if parts.hostname in _LOCAL_HOSTS else None


def default_layout(settings: Settings, broker_port: int | None = None, store_port: int | None = None,
                   s3_port: int | None = None, durable: bool = False) -> Layout:
    """Ports: argument, else MASKWATCH_{BROKER,STORE,S3}_PORT, else the port Settings' clients will dial
    (kafka_bootstrap / store_url when local), else the defaults 19092 / 18123 / 18333."""
    first_bootstrap = settings.kafka_bootstrap.split(",")[0]
    local = DevServicesSettings()
    return Layout(
        broker_port=broker_port or local.broker_port or _local_port(first_bootstrap)
        or broker_mod.DEFAULT_PORT,
        store_port=store_port or local.store_port or _local_port(settings.store_url)
        or store_service.DEFAULT_PORT,
        s3_port=s3_port or local.s3_port or seaweed_mod.DEFAULT_S3_PORT,
        durable=durable,
    )


def _state_file(home: Path) -> Path:
    return home / "run" / "services.json"


def recorded_layout(home: Path) -> Layout | None:
    try:
        return Layout(**json.loads(_state_file(home).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as ex:
        log.warning("ignoring unreadable %s: %s", _state_file(home), ex)
        return None


def _running(layout: Layout, home: Path) -> bool:
    services: list[Service] = [layout.broker(home), layout.store(home), layout.seaweed(home)]
    return any(service.pid() is not None for service in services)


def up(settings: Settings, durable: bool = False, broker_port: int | None = None,
       store_port: int | None = None, s3_port: int | None = None, topics: bool = True) -> list[str]:
    """Start whatever is not running (idempotent) and create the topics; returns one message per service.

    Services already running keep the layout they were started with; switching between memory and
    durable broker storage needs a ``down`` first.
    """
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    wanted = default_layout(settings, broker_port, store_port, s3_port, durable)
    recorded = recorded_layout(home)
    layout = recorded if recorded is not None and _running(recorded, home) else wanted
    messages: list[str] = []
    if layout != wanted:
        messages.append(f"note: services already running with {_describe(layout)}, not the requested "
                        f"{_describe(wanted)}; run 'maskwatch services down' first to change that")
    messages.extend(_client_mismatches(settings, layout))
    _state_file(home).parent.mkdir(parents=True, exist_ok=True)
    _state_file(home).write_text(json.dumps(dataclasses.asdict(layout)))

    started: list[Service] = []
    try:
        seaweed = layout.seaweed(home) if layout.durable else None
        services: list[Service] = [
            *([seaweed] if seaweed else []), layout.broker(home, seaweed), layout.store(home)
        ]
        for service in services:
            address = _address(service)
            pid = service.pid()
            if pid is not None:
                messages.append(f"{service.name}: already running (pid {pid}) on {address}")
                continue
            pid = service.start()
            started.append(service)
            messages.append(f"{service.name}: started (pid {pid}) on {address}")
    except ServiceError:
        for service in reversed(started):
            service.stop()
        raise
    if topics:
        broker_settings = settings.replace(kafka_bootstrap=f"127.0.0.1:{layout.broker_port}")
        found = ensure_topics(broker_settings)
        messages.append("topics: " + ", ".join(f"{name} ({n} partitions)" for name, n in found.items()))
    return messages


def _client_mismatches(settings: Settings, layout: Layout) -> list[str]:
    """Warn when the clients' settings (local addresses) point at other ports than the services use."""
    notes = []
    bootstrap_port = _local_port(settings.kafka_bootstrap.split(",")[0])
    if bootstrap_port is not None and bootstrap_port != layout.broker_port:
        notes.append(f"note: MASKWATCH_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} but the broker is on port "
                     f"{layout.broker_port}; set MASKWATCH_KAFKA_BOOTSTRAP=127.0.0.1:{layout.broker_port}")
    store_port = _local_port(settings.store_url)
    if store_port is not None and store_port != layout.store_port:
        notes.append(f"note: MASKWATCH_STORE_URL points at port {store_port} but the store server is on port "
                     f"{layout.store_port}")
    return notes


def down(settings: Settings) -> list[str]:
    """Stop every service (store first, then broker, then its storage); fine when nothing runs."""
    home = settings.home
    layout = recorded_layout(home) or default_layout(settings)
    messages = []
    # Seaweed is always checked: a stale layout must not leave it running.
    for service in (layout.store(home), layout.broker(home), layout.seaweed(home)):
        if service.stop():
            messages.append(f"{service.name}: stopped")
        elif not isinstance(service, Seaweed) or layout.durable:
            messages.append(f"{service.name}: not running")
    _state_file(home).unlink(missing_ok=True)
    return messages


def status(settings: Settings) -> list[ServiceStatus]:
    home = settings.home
    layout = recorded_layout(home) or default_layout(settings)
    seaweed = layout.seaweed(home)
    services: list[Service] = [layout.broker(home), layout.store(home)]
    if layout.durable or seaweed.pid() is not None:
        services.append(seaweed)
    result = []
    for service in services:
        pid = service.pid()
        state = "down" if pid is None else ("up" if service.ready() else "unresponsive")
        result.append(ServiceStatus(service.name, _address(service), pid, state))
    return result


def _describe(layout: Layout) -> str:
    storage = f"durable storage (S3 port {layout.s3_port})" if layout.durable else "memory storage"
    return f"broker port {layout.broker_port}, store port {layout.store_port}, {storage}"


def _address(service: Service) -> str:
    if isinstance(service, Broker):
        storage = "memory" if service.storage == broker_mod.MEMORY_STORAGE else service.storage
        return f"{service.bootstrap} (storage {storage})"
    if isinstance(service, StoreService):
        return f"{service.url} (data {service.chdb_dir})"
    return f"{service.endpoint} (S3, data {service.data_dir})"
