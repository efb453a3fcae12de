"""One place for settings: environment variables (``MASKWATCH_*``), nothing on the command line for secrets.

Every process (ticker, flow, dashboard, CLI) reads the same variables, so the embedded default and a
production cluster differ only in their environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def secret(name: str) -> str | None:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE`` (Docker/Kubernetes secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    # Local state of the embedded default: pid files, logs, chdb data, recovery, snapshots.
    home: Path = field(default_factory=lambda: Path(_env("MASKWATCH_HOME", ".maskwatch")).resolve())
    kafka_bootstrap: str = field(default_factory=lambda: _env("MASKWATCH_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    # clickhouse-connect DSN: http(s)://host:port/?database=... for a server, chdb:///DIR in-process.
    store_url: str = field(
        default_factory=lambda: _env("MASKWATCH_STORE_URL", "http://127.0.0.1:18123/?database=maskwatch")
    )
    topic_ticks: str = field(default_factory=lambda: _env("MASKWATCH_TOPIC_TICKS", "maskwatch.ticks"))
    topic_alerts: str = field(default_factory=lambda: _env("MASKWATCH_TOPIC_ALERTS", "maskwatch.alerts"))
    topic_dead_letter: str = field(
        default_factory=lambda: _env("MASKWATCH_TOPIC_DEAD_LETTER", "maskwatch.dead-letter")
    )
    tick_partitions: int = field(default_factory=lambda: int(_env("MASKWATCH_TICK_PARTITIONS", "8")))
    models_dir: Path = field(
        default_factory=lambda: Path(
            _env("MASKWATCH_MODELS_DIR", str(Path.home() / ".cache" / "maskwatch" / "models"))
        )
    )

    @property
    def store_password(self) -> str | None:
        return secret("MASKWATCH_STORE_PASSWORD")

    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings: bootstrap plus any ``MASKWATCH_KAFKA__<key>`` passthrough (SASL/SSL)."""
        conf = {"bootstrap.servers": self.kafka_bootstrap}
        prefix = "MASKWATCH_KAFKA__"
        for key, value in os.environ.items():
            if key.startswith(prefix):
                conf[key[len(prefix) :].lower().replace("__", ".")] = value
        password = secret("MASKWATCH_KAFKA_SASL_PASSWORD")
        if password:
            conf["sasl.password"] = password
        return conf


def settings() -> Settings:
    return Settings()
