"""The notifier's YAML configuration: where alerts go, in which shape, how fast, for which cameras.

Example ``notify.yaml``::

    retry: {attempts: 5, base_delay_s: 0.5, max_delay_s: 30}
    destinations:
      - name: ops-slack
        url_env: SLACK_WEBHOOK_URL      # the URL from $SLACK_WEBHOOK_URL or the file $SLACK_WEBHOOK_URL_FILE
        format: slack                   # slack | teams | telegram | email | generic
        sites: [hq]                     # optional filters; empty = every alert
        events: [alerts, camera_health] # the default: alerts, and cameras going down / back up
        rate: {per_minute: 20, burst: 5}
      - name: site-teams                # a Teams Workflows webhook ("Post to a channel when a webhook
        url_env: TEAMS_WORKFLOW_URL     # request is received"): an Adaptive Card
        format: teams
      - name: guards-telegram
        url_env: TELEGRAM_SEND_URL      # https://api.telegram.org/bot<token>/sendMessage
        format: telegram
        chat_id: "-1001234567890"
      - name: managers-mail
        format: email
        smtp: {host: smtp.example.com, port: 587, security: starttls, username: maskwatch,
               password_env: SMTP_PASSWORD, sender: maskwatch@example.com, to: [managers@example.com]}
      - name: audit
        url: https://audit.internal/alerts
        format: generic
        hmac_secret_env: AUDIT_HMAC_SECRET   # signs each post (X-Maskwatch-Signature)

Webhook URLs usually carry their secret in the path (Slack, Teams, Telegram's bot token), so they are
never logged: only the destination's name and host are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from maskwatch.config import secret
from maskwatch.schemas.events import AlertEvent, AlertEventKind, CameraHealthEvent

EventKind = Literal["alerts", "camera_health"]
EVENT_KINDS: tuple[EventKind, ...] = ("alerts", "camera_health")


DEFAULT_ALERT_EVENTS: tuple[AlertEventKind, ...] = ("opened", "reopened", "resolved", "acknowledged")


class NotifyConfigError(ValueError):
    """The config file is missing, unreadable or invalid; the message names the file and the field."""


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(default=5, ge=1, le=20, description="Tries per alert and destination.")
    base_delay_s: float = Field(default=0.5, gt=0, le=60)
    max_delay_s: float = Field(default=30.0, gt=0, le=600)
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="HTTP timeout of one try.")

    def delay(self, failures: int) -> float:
        """Exponential backoff after the ``failures``-th failed try, capped."""
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** (failures - 1)))


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_minute: float = Field(default=30.0, gt=0, description="Sustained posts per minute.")
    burst: int = Field(default=5, ge=1, description="Posts allowed back to back after a quiet period.")


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ADDRESS = r"^[^@\s<>,;]{1,64}@[A-Za-z0-9.-]{1,253}$"


def required_secret(field: str, env: str, owner: str = "") -> str:
    """The secret the environment variable ``env`` (or its ``_FILE`` twin) holds, named by ``field`` of
    the config; a NotifyConfigError saying which to set when neither is."""
    found = secret(env)
    if not found:
        raise NotifyConfigError(f"{owner}{field} {env} is not set (set {env} or {env}_FILE)")
    return found


class Smtp(BaseModel):
    """An e-mail destination's server: TLS always (STARTTLS on 587, or TLS from the start on 465)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls"] = "starttls"
    username: str = Field(default="", max_length=256)
    password_env: str | None = Field(default=None, pattern=ENV_NAME,
                                     description="Env var holding the password (or NAME_FILE).")
    sender: str = Field(pattern=_ADDRESS)
    to: list[Annotated[str, Field(pattern=_ADDRESS)]] = Field(min_length=1, max_length=50)
    ca_file: Path | None = Field(default=None, description="CA bundle for a server with a private CA.")

    def password(self) -> str | None:
        return None if self.password_env is None else required_secret("smtp password_env", self.password_env)


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    url: str | None = Field(default=None, repr=False)
    url_env: str | None = Field(default=None, pattern=ENV_NAME,
                                description="Env var holding the URL (or NAME_FILE naming a file with it).")
    format: Literal["slack", "teams", "telegram", "email", "generic"] = "generic"
    chat_id: str | None = Field(default=None, pattern=r"^(-?[0-9]{1,20}|@[A-Za-z0-9_]{5,32})$",
                                description="Telegram: the chat, group or channel to post to.")
    smtp: Smtp | None = None
    hmac_secret_env: str | None = Field(default=None, pattern=ENV_NAME,
                                        description="generic: sign each post with the secret in this env "
                                                    "var (or NAME_FILE)")
    sites: list[str] = Field(default_factory=list)
    zones: list[str] = Field(default_factory=list)
    cameras: list[str] = Field(default_factory=list)
    # What this destination is told of: no-mask alerts, and cameras going down and coming back up.
    events: list[EventKind] = Field(default_factory=lambda: list(EVENT_KINDS), min_length=1)
    # Which steps of an alert's life it is told of; "updated" (more people) is left out unless asked for.
    alert_events: list[AlertEventKind] = Field(default_factory=lambda: list(DEFAULT_ALERT_EVENTS),
                                               min_length=1)
    rate: RateLimit = Field(default_factory=RateLimit)

    @model_validator(mode="after")
    def _one_url(self) -> Destination:
        if self.format == "email":
            if self.smtp is None or self.url is not None or self.url_env is not None:
                raise ValueError("an email destination takes smtp: {host, sender, to, ...}, not a url")
            return self
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url or url_env")
        if self.smtp is not None:
            raise ValueError("smtp is for format: email only")
        if (self.format == "telegram") != (self.chat_id is not None):
            raise ValueError("chat_id is required for format: telegram, and only for it")
        if self.hmac_secret_env is not None and self.format != "generic":
            raise ValueError("hmac_secret_env signs generic webhooks only")
        return self

    def hmac_secret(self) -> bytes | None:
        if self.hmac_secret_env is None:
            return None
        return required_secret("hmac_secret_env", self.hmac_secret_env, f"destination {self.name}: ").encode()

    def resolved_url(self) -> str:
        """The webhook URL, read from the environment/secret file when ``url_env`` is used (an e-mail
        destination's is ``smtp://host:port``, for logs)."""
        if self.smtp is not None:
            return f"smtp://{self.smtp.host}:{self.smtp.port}"
        if self.url is not None:
            url = self.url
        else:
            assert self.url_env is not None
            url = required_secret("url_env", self.url_env, f"destination {self.name}: ")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NotifyConfigError(f"destination {self.name}: webhook URL must be http(s)://host/..., "
                                    f"got scheme {parts.scheme or '(none)'!r}")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in 0..65535
        except ValueError:
            raise NotifyConfigError(f"destination {self.name}: webhook URL has an invalid port "
                                    f"(host {parts.hostname})") from None
        return url

    def matches(self, event: AlertEvent | CameraHealthEvent) -> bool:
        kind = "alerts" if isinstance(event, AlertEvent) else "camera_health"
        if isinstance(event, AlertEvent) and event.kind not in self.alert_events:
            return False
        return (kind in self.events
                and (not self.sites or event.site in self.sites)
                and (not self.zones or event.zone in self.zones)
                and (not self.cameras or event.camera_id in self.cameras))


class NotifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    destinations: list[Destination] = Field(min_length=1)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @model_validator(mode="after")
    def _unique_names(self) -> NotifyConfig:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique, repeated: {', '.join(dupes)}")
        return self


def host_of(url: str) -> str:
    """What may be shown of a webhook URL: scheme, host and port (the path often is the secret)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def load_config(path: Path) -> NotifyConfig:
    """Parse and validate ``path``; every destination's URL must resolve now, not at the first alert."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise NotifyConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise NotifyConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise NotifyConfigError(f"{path}: expected a mapping with 'destinations', got {type(data).__name__}")
    try:
        config = NotifyConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        raise NotifyConfigError(f"{path}: {problems}") from None
    for destination in config.destinations:
        try:
            destination.resolved_url()
            destination.hmac_secret()
            if destination.smtp is not None:
                destination.smtp.password()
        except NotifyConfigError as exc:
            raise NotifyConfigError(f"{path}: {exc}") from None
    return config
