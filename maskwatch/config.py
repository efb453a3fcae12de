"""Every setting maskwatch reads, typed: ``MASKWATCH_*`` environment variables, one model per concern.

Every process (ticker, flow, dashboard, notifier, CLI) reads the same variables, so the embedded default and
a production cluster differ only in their environment. Secrets come from the variable or from the file its
``_FILE`` twin names (Docker and Kubernetes secrets), never from a command line. A bad value fails at once
with a :class:`ConfigError` that names the variable, what it expects and what it got::

    MASKWATCH_FLOW_BATCH_MAX='lots': expected a whole number (Input should be a valid integer ...)

``maskwatch config show`` prints the effective values (secrets masked) and ``maskwatch config vars`` the
table of every variable with its default (the README's configuration section is that table).
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting with a value maskwatch cannot use; the message names the variable and what it expects."""


def secret(name: str) -> str | None:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE`` (Docker/Kubernetes secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path!r}: cannot read it ({exc.strerror or exc})") from None
    return os.environ.get(name)


def _describe(model: type[_Section], exc: ValidationError) -> str:
    """One line per bad value: the variable, what it got (never a secret's value), what it expects."""
    prefix = model.model_config.get("env_prefix", "")
    lines = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a rule across fields; its message names the variables
            lines.append(message)
            continue
        field = str(error["loc"][0])
        got = error.get("input")
        shown = "(secret)" if field in model.SECRETS else "(not set)" if got is None else repr(got)
        info = model.model_fields.get(field)
        meaning = f" ({info.description})" if info is not None and info.description else ""
        lines.append(f"{prefix.upper()}{field.upper()}={shown}: {message}{meaning}")
    return "\n".join(lines) or str(exc)


class _Section(BaseSettings):
    """One concern's settings. Construction validates everything and turns errors into ConfigError."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, validate_default=True)
    # Field names whose values are never shown (config show, errors).
    SECRETS: ClassVar[frozenset[str]] = frozenset()
    # What `maskwatch config vars` calls this group.
    TITLE: ClassVar[str] = ""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(type(self), exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """``NAME_FILE`` fills a secret field that ``NAME`` (or an argument) did not set."""
        if not isinstance(data, dict):
            return data
        prefix = cls.model_config.get("env_prefix", "")
        for field in cls.SECRETS:
            if data.get(field) is None:
                value = secret(f"{prefix}{field}".upper())
                if value is not None:
                    data[field] = value
        return data


class Settings(_Section):
    """Where maskwatch's parts meet: the broker, the store, the topics, local state and the models."""

    model_config = SettingsConfigDict(
        env_prefix="MASKWATCH_", extra="ignore", frozen=True, validate_default=True
    )
    SECRETS: ClassVar[frozenset[str]] = frozenset({"store_password", "store_dashboard_password",
                                                   "kafka_sasl_password"})
    TITLE: ClassVar[str] = "Core"

    home: Path = Field(
        default=Path(".maskwatch"),
        description="local state: pid files, logs, chdb data, recovery, "
        "buffers, snapshots (resolved to an absolute path)",
    )
    kafka_bootstrap: str = Field(
        default="127.0.0.1:19092", min_length=1, description="Kafka bootstrap servers, host:port[,host:port]"
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        description="sasl.password for the Kafka clients "
        "(or _FILE); other librdkafka keys: MASKWATCH_KAFKA__<key>",
    )
    store_url: str = Field(
        default="http://127.0.0.1:18123/?database=maskwatch",
        min_length=1,
        description="ClickHouse: http(s)://[user@]host:port/?database=NAME",
    )
    store_password: SecretStr | None = Field(default=None, description="the store user's password (or _FILE)")
    store_dashboard_password: SecretStr | None = Field(
        default=None,
        description="password of the dashboard's read-mostly store user maskwatch_dashboard (or _FILE): "
        "the embedded store serves it; `maskwatch store grant-dashboard` creates it on ClickHouse",
    )
    store_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description="longest wait for the store to answer a call; a hung store then counts as down "
        "(the flow's rows go to its disk buffer)",
    )
    store_connect_timeout_s: float = Field(default=3.0, gt=0, le=60, description="store TCP connect timeout")
    topic_ticks: str = Field(default="maskwatch.ticks", min_length=1, description="tick topic")
    topic_alerts: str = Field(default="maskwatch.alerts", min_length=1, description="alert topic")
    topic_dead_letter: str = Field(
        default="maskwatch.dead-letter", min_length=1, description="dead-letter topic"
    )
    topic_camera_health: str = Field(
        default="maskwatch.camera-health", min_length=1,
        description="camera health changes (down, back up, ...), keyed by camera id",
    )
    tick_partitions: int = Field(default=8, ge=1, description="partitions of a tick topic maskwatch creates")
    models_dir: Path = Field(
        default=Path.home() / ".cache" / "maskwatch" / "models",
        description="pulled and tuned models (ONNX + manifest.json)",
    )
    device: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        default="auto",
        description="inference device: auto = TensorRT, then CUDA, then CPU, whichever initialises",
    )
    log_level: LogLevel = Field(default="INFO", description="log level of every command")
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one object per line, for log collectors"
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="serve Prometheus /metrics on this port (0: off)"
    )
    metrics_host: str = Field(default="127.0.0.1", min_length=1, description="address /metrics binds")
    file_roots: Annotated[tuple[Path, ...] | None, NoDecode] = Field(
        default=None,
        description=f"folders file:// cameras may read, {os.pathsep!r}-separated "
        "(default: samples/, ../shared/datasets, MASKWATCH_HOME)",
    )

    @model_validator(mode="before")
    @classmethod
    def _local_store_credential(cls, data: Any) -> Any:
        # Only when neither the variable nor its _FILE twin says otherwise.
        if (isinstance(data, dict) and data.get("store_password") is None
                and not os.environ.get("MASKWATCH_STORE_PASSWORD_FILE")):
            password = local_store_password(data)
            if password is not None:
                data["store_password"] = password
        return data

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("home", "models_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("file_roots", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p.strip())
        return value

    def replace(self, **changes: Any) -> Settings:
        """These settings with some values changed, validated again (variants for services and tests)."""
        return type(self)(**{**dict(self), **changes})

    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings: bootstrap plus any ``MASKWATCH_KAFKA__<key>`` passthrough (SASL/SSL)."""
        conf = {"bootstrap.servers": self.kafka_bootstrap}
        conf.update(kafka_passthrough())
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return conf

    def store_password_value(self) -> str | None:
        return self.store_password.get_secret_value() if self.store_password is not None else None

    def store_dashboard_password_value(self) -> str | None:
        secret = self.store_dashboard_password
        return secret.get_secret_value() if secret is not None else None


# The embedded store's password, made by `maskwatch services up` (mode 600): the default of
# MASKWATCH_STORE_PASSWORD_FILE for a store on this machine, so every local process finds it; and the
# one of its dashboard user (a store URL naming maskwatch_dashboard@ reads that one).
LOCAL_STORE_CREDENTIAL = Path("secrets") / "store_password"
LOCAL_DASHBOARD_CREDENTIAL = Path("secrets") / "store_dashboard_password"
DASHBOARD_STORE_USER = "maskwatch_dashboard"
_LOOPBACK = re.compile(r"^[a-z]+://(?:[^@/]*@)?(?:127\.[0-9.]+|localhost|\[::1\])(?::\d+)?(?:[/?]|$)", re.I)


def local_store_password(data: dict[str, Any]) -> str | None:
    """The embedded store's credential under MASKWATCH_HOME, when the store URL is on this machine (never
    sent to a store elsewhere)."""
    url = str(data.get("store_url") or os.environ.get("MASKWATCH_STORE_URL")
              or Settings.model_fields["store_url"].default)
    if not _LOOPBACK.match(url):
        return None
    home = Path(data.get("home") or os.environ.get("MASKWATCH_HOME") or Settings.model_fields["home"].default)
    dashboard = re.match(rf"^[a-z]+://{DASHBOARD_STORE_USER}@", url, re.I) is not None
    path = home.expanduser() / (LOCAL_DASHBOARD_CREDENTIAL if dashboard else LOCAL_STORE_CREDENTIAL)
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def kafka_passthrough() -> dict[str, str]:
    """``MASKWATCH_KAFKA__SECURITY__PROTOCOL=SASL_SSL`` -> ``{"security.protocol": "SASL_SSL"}``."""
    prefix = "MASKWATCH_KAFKA__"
    return {
        key[len(prefix) :].lower().replace("__", "."): value
        for key, value in os.environ.items()
        if key.startswith(prefix)
    }


class FlowSettings(_Section):
    """The detection dataflow's knobs (``maskwatch flow run`` reads them on every process of a cluster)."""

    model_config = SettingsConfigDict(
        env_prefix="MASKWATCH_FLOW_", extra="ignore", frozen=True, validate_default=True
    )
    TITLE: ClassVar[str] = "Flow"

    detector: str = Field(
        default="", description="detector by manifest name ('' = the default, tuned when built)"
    )
    classifier: str = Field(default="", description="classifier by manifest name ('' = the default)")
    batch_max: int = Field(default=16, ge=1, le=1024, description="ticks per micro-batch at most")
    batch_timeout_s: float = Field(
        default=0.5, ge=0.01, le=60, description="seconds a micro-batch waits to fill"
    )
    shards: int | None = Field(
        default=None, ge=1, le=4096, description="micro-batch shards (default: one per worker of the cluster)"
    )
    fetch_concurrency: int = Field(
        default=8, ge=1, le=1024, description="threads per worker decoding frames (network waits hold none)"
    )
    fetch_deadline_s: float = Field(
        default=5.0, ge=0.1, le=300, description="wall-clock limit of one camera's fetch, from its start"
    )
    fetch_connect_timeout_s: float = Field(default=2.0, ge=0.1, le=300, description="TCP connect timeout")
    fetch_read_timeout_s: float = Field(
        default=3.0, ge=0.1, le=300, description="RTSP: seconds without a packet before reconnecting"
    )
    fetch_max_bytes: int = Field(
        default=10 * 1024**2, ge=1024, description="largest snapshot accepted, bytes"
    )
    fetch_backoff_after: int = Field(
        default=3, ge=1, le=1000, description="failed ticks in a row before a camera is backed off"
    )
    fetch_backoff_max_s: float = Field(
        default=300.0, ge=1, le=86400,
        description="longest wait between probes of a backed-off camera (10 s at first, doubling)",
    )
    fetch_ca_file: Path | None = Field(
        default=None, description="CA bundle for HTTPS cameras with a private CA (default: the system's)"
    )
    bucket_s: int = Field(
        default=10, ge=1, le=3600, description="event-time bucket the rules count in, seconds"
    )
    lateness_s: int = Field(
        default=5, ge=0, le=3600, description="how long a bucket waits for late ticks, seconds"
    )
    rule_window_s: int = Field(default=60, ge=1, le=86400, description="rule window (a multiple of bucket_s)")
    rule_min_people: int = Field(
        default=3, ge=0, description="distinct no-mask people in a window that raise an alert (0 = off)"
    )
    rule_min_people_in_frame: int = Field(
        default=0, ge=0, description="no-mask people on one frame that raise an alert (0 = off)"
    )
    rule_min_dwell_s: float = Field(
        default=0, ge=0, description="seconds one no-mask person stays in view before an alert (0 = off)"
    )
    rule_nomask_ratio: float = Field(
        default=0, ge=0, le=1,
        description="share of a window's frames with a no-mask face that raises an alert (0 = off)",
    )
    rule_min_frames: int = Field(
        default=3, ge=1, description="frames a window needs before the ratio rule applies"
    )
    rule_cooldown_s: int = Field(default=300, ge=0, description="seconds before the same rule fires again")
    track_max_gap_s: float = Field(
        default=30, gt=0, le=3600,
        description="a person unseen for longer has left; a later face is someone new, seconds",
    )
    track_max_move: float = Field(
        default=1.5, gt=0, le=100,
        description="how far (face heights) a face may move between two ticks and still be the same person",
    )
    rule_scopes: Annotated[tuple[Literal["camera", "zone", "site"], ...], NoDecode] = Field(
        default=("camera",),
        min_length=1,
        description="where rules apply, comma-separated: camera, zone, site",
    )
    tick_max_age_s: float = Field(
        default=7 * 86400,
        gt=0,
        le=366 * 86400,
        description="ticks scheduled longer ago than this are dead-lettered (a backlog older than the "
        "topic's retention is not worth fetching)",
    )
    tick_max_ahead_s: float = Field(
        default=120,
        ge=0,
        le=86400,
        description="ticks scheduled further ahead of this host's clock are dead-lettered (clock skew)",
    )
    registry_refresh_s: float = Field(
        default=30.0, ge=0.1, le=86400, description="seconds between registry reads"
    )
    health_degraded_after: int = Field(
        default=1, ge=1, description="failures in a row that make a camera degraded"
    )
    health_down_after: int = Field(default=3, ge=1, description="failures in a row that make a camera down")
    health_recover_after: int = Field(
        default=2, ge=1, description="good ticks in a row that make a degraded or down camera ok again"
    )
    store_retry_max_s: float = Field(
        default=30.0, ge=0.1, le=3600, description="longest backoff of store retries"
    )
    buffer_max_bytes: int = Field(
        default=512 * 1024**2,
        ge=1024,
        description="disk buffer for rows while the store is down, bytes per worker",
    )
    snapshots: bool = Field(default=True, description="save an annotated JPEG of frames with a no-mask face")
    snapshot_max_width: int = Field(default=640, ge=32, le=8192, description="snapshot width, pixels")
    snapshot_blur_faces: bool = Field(default=False, description="blur the faces in snapshots")
    snapshot_keep_days: float = Field(default=30, gt=0, le=36500,
                                      description="snapshot files older than this are deleted, days")
    snapshot_max_bytes: int = Field(default=10 * 1024**3, ge=1024**2,
                                    description="snapshots kept on this host at most, bytes (oldest first "
                                                "out)")
    alert_dedup_horizon_s: int = Field(
        default=7 * 86400,
        ge=0,
        description="alerts on the topic within this horizon are not published again after a replay",
    )

    @field_validator("rule_scopes", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FlowSettings:
        if self.health_down_after < self.health_degraded_after:
            raise ValueError(
                f"MASKWATCH_FLOW_HEALTH_DOWN_AFTER={self.health_down_after} must be >= "
                f"MASKWATCH_FLOW_HEALTH_DEGRADED_AFTER={self.health_degraded_after}"
            )
        if self.rule_window_s % self.bucket_s:
            raise ValueError(
                f"MASKWATCH_FLOW_RULE_WINDOW_S={self.rule_window_s} must be a multiple of "
                f"MASKWATCH_FLOW_BUCKET_S={self.bucket_s}"
            )
        return self


class ImageLimits(_Section):
    """Limits checked on every image before it is decoded (a camera controls those bytes)."""

    model_config = SettingsConfigDict(
        env_prefix="MASKWATCH_MAX_IMAGE_", extra="ignore", frozen=True, validate_default=True
    )
    TITLE: ClassVar[str] = "Image limits"

    bytes: int = Field(default=20 * 1024**2, ge=1, description="largest encoded image, bytes")
    pixels: int = Field(default=40_000_000, ge=1, description="most pixels an image may declare")


class Retention(_Section):
    """How long the store keeps rows (read when a migration creates or alters a table)."""

    model_config = SettingsConfigDict(
        env_prefix="MASKWATCH_TTL_DAYS_", extra="ignore", frozen=True, validate_default=True
    )
    TITLE: ClassVar[str] = "Retention"

    frames: int = Field(default=30, ge=1, le=36500, description="days frames are kept")
    detections: int = Field(default=30, ge=1, le=36500, description="days detections are kept")
    alerts: int = Field(default=365, ge=1, le=36500, description="days alerts are kept")
    camera_health: int = Field(default=14, ge=1, le=36500, description="days camera health rows are kept")
    rollup_hourly: int = Field(default=400, ge=1, le=36500,
                               description="days the hourly compliance rollups are kept")
    rollup_daily: int = Field(default=3650, ge=1, le=36500,
                              description="days the daily compliance rollups are kept")


class DashboardSettings(_Section):
    """The Streamlit dashboard."""

    model_config = SettingsConfigDict(
        env_prefix="MASKWATCH_DASHBOARD_", extra="ignore", frozen=True, validate_default=True
    )
    TITLE: ClassVar[str] = "Dashboard"

    port: int = Field(default=8501, ge=1, le=65535, description="port `maskwatch dashboard run` serves")
    users_file: Path | None = Field(
        default=None,
        description="users and roles (`maskwatch dashboard adduser`); unset: the dashboard refuses to serve",
    )
    session_minutes: float = Field(
        default=30.0, gt=0, le=7 * 24 * 60, description="idle minutes before sign-out"
    )


class NotifySettings(_Section):
    """The notifier (`maskwatch notify`)."""

    model_config = SettingsConfigDict(
        env_prefix="MASKWATCH_NOTIFY_", extra="ignore", frozen=True, validate_default=True
    )
    TITLE: ClassVar[str] = "Notifier"

    config: Path | None = Field(default=None, description="destinations YAML")
    group: str = Field(default="maskwatch-notify", min_length=1, description="Kafka consumer group")
    state: Path | None = Field(
        default=None,
        description="SQLite file of delivered alerts (default: $MASKWATCH_HOME/notify/delivered.sqlite)",
    )


class SnapshotLinkSettings(_Section):
    """Signed, expiring HTTPS links to alert snapshots for chat and webhooks (`maskwatch snapshots serve`)."""

    model_config = SettingsConfigDict(
        env_prefix="MASKWATCH_SNAPSHOT_LINK_", extra="ignore", frozen=True, validate_default=True
    )
    SECRETS: ClassVar[frozenset[str]] = frozenset({"key"})
    TITLE: ClassVar[str] = "Snapshot links"

    base: str = Field(
        default="", description="public base URL of `maskwatch snapshots serve`, https:// (unset: no links)"
    )
    key: SecretStr | None = Field(default=None, description="HMAC key the links are signed with (or _FILE)")
    ttl_s: int = Field(default=7 * 86400, ge=60, le=90 * 86400, description="how long a link works, seconds")
    port: int = Field(default=8502, ge=1, le=65535, description="port `maskwatch snapshots serve` listens on")
    tls_cert: Path | None = Field(default=None, description="certificate (PEM) to serve HTTPS directly")
    tls_key: Path | None = Field(default=None, description="its private key (PEM)")

    @model_validator(mode="after")
    def _https(self) -> SnapshotLinkSettings:
        if self.base:
            parts = urlsplit(self.base)
            loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
            if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
                raise ValueError(f"MASKWATCH_SNAPSHOT_LINK_BASE={self.base[:80]!r} must be an https:// URL "
                                 "(http:// only on loopback)")
            if self.key is None:
                raise ValueError("MASKWATCH_SNAPSHOT_LINK_BASE is set: set MASKWATCH_SNAPSHOT_LINK_KEY "
                                 "(or _FILE) too")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both MASKWATCH_SNAPSHOT_LINK_TLS_CERT and MASKWATCH_SNAPSHOT_LINK_TLS_KEY")
        return self


class DevServicesSettings(_Section):
    """The embedded default's local services (`maskwatch services up`, `maskwatch up`)."""

    model_config = SettingsConfigDict(
        env_prefix="MASKWATCH_", extra="ignore", frozen=True, validate_default=True
    )
    SECRETS: ClassVar[frozenset[str]] = frozenset({"s3_access_key", "s3_secret_key"})
    TITLE: ClassVar[str] = "Local services"

    broker_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="local broker port (default: the port of MASKWATCH_KAFKA_BOOTSTRAP if local, else 19092)",
    )
    store_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="local store server port (default: the port of MASKWATCH_STORE_URL if local, else 18123)",
    )
    s3_port: int | None = Field(
        default=None, ge=1, le=65535, description="SeaweedFS S3 port with --durable (default 18333)"
    )
    s3_access_key: SecretStr | None = Field(
        default=None, description="SeaweedFS S3 access key (default: generated)"
    )
    s3_secret_key: SecretStr | None = Field(
        default=None, description="SeaweedFS S3 secret key (default: generated)"
    )


SECTIONS: tuple[type[_Section], ...] = (
    Settings,
    FlowSettings,
    ImageLimits,
    Retention,
    DashboardSettings,
    NotifySettings,
    SnapshotLinkSettings,
    DevServicesSettings,
)


def settings() -> Settings:
    return Settings()


def env_name(section: type[_Section], field: str) -> str:
    return f"{section.model_config.get('env_prefix', '')}{field}".upper()


def effective() -> list[tuple[str, str, str]]:
    """(variable, value, where from) of every setting, secrets masked."""
    rows = []
    for section in SECTIONS:
        values = section()
        for field in section.model_fields:
            name = env_name(section, field)
            value = getattr(values, field)
            if field in section.SECRETS:
                shown = "(not set)" if value is None else "***"
            elif isinstance(value, tuple):
                shown = (os.pathsep if field == "file_roots" else ",").join(str(v) for v in value)
            else:
                shown = "" if value is None else str(value)
            source = "file" if os.environ.get(f"{name}_FILE") else "env" if name in os.environ else "default"
            rows.append((name, shown, source))
    passthrough = kafka_passthrough()
    for key in passthrough:
        name = "MASKWATCH_KAFKA__" + key.upper().replace(".", "__")
        masked = any(word in key for word in ("password", "secret", "key", "token"))
        rows.append((name, "***" if masked else passthrough[key], "env"))
    return rows


def _shown_default(info: Any) -> str:
    default = info.default
    if isinstance(default, Path) and default.is_absolute():
        default = ("~/" + str(default.relative_to(Path.home())) if default.is_relative_to(Path.home())
                   else default)
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return "" if default is None else str(default)


def variables_markdown(compact: bool = False) -> str:
    """Every variable with its default and meaning, a Markdown table per section (docs/configuration.md);
    ``compact``: every variable with its default, a paragraph per section (the README's)."""
    out = []
    for section in SECTIONS:
        title = f"**{section.TITLE}** — {(section.__doc__ or '').strip()}"
        if compact:
            entries = []
            for field, info in section.model_fields.items():
                default = _shown_default(info)
                name = env_name(section, field) + ("(_FILE)" if field in section.SECRETS else "")
                entries.append(f"`{name}={default}`" if default else f"`{name}`")
            out.append("\n".join(textwrap.wrap(f"{title} " + " · ".join(entries), 110,
                                                break_long_words=False, break_on_hyphens=False)) + "\n")
            continue
        out.append(f"{title}\n")
        out.append("| variable | default | meaning |")
        out.append("| --- | --- | --- |")
        for field, info in section.model_fields.items():
            default = _shown_default(info)
            shown = f"`{default}`" if default else ""
            suffix = " (or `_FILE`)" if field in section.SECRETS else ""
            out.append(f"| `{env_name(section, field)}`{suffix} | {shown} | {info.description or ''} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
