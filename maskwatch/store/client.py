"""The store: the one module every reader and writer of ClickHouse goes through.

Configured by one URL (``MASKWATCH_STORE_URL``): ``http(s)://[user@]host:port/?database=NAME`` for a
ClickHouse server (the embedded default is chdb behind ``maskwatch store serve``), or ``chdb:///DIR?database=NAME``
for the engine in-process. The password comes from ``MASKWATCH_STORE_PASSWORD`` (or ``..._FILE``), never the
URL's text in logs. Both kinds of URL go through clickhouse-connect, so there is one code path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import clickhouse_connect
import polars as pl
from clickhouse_connect.driver.client import Client
from pydantic import BaseModel

from maskwatch.config import Retention, Settings
from maskwatch.schemas.events import (
    Alert,
    AlertEvent,
    CameraHealth,
    CameraHealthEvent,
    FaceDetection,
    FrameResult,
)
from maskwatch.schemas.redaction import redact_url

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "schemas" / "sql"
# Days each table keeps its rows; override with MASKWATCH_TTL_DAYS_<TABLE>, read when a migration is applied.
# Tables with a TTL; the days come from MASKWATCH_TTL_DAYS_<TABLE> (maskwatch.config.Retention).
TTL_DEFAULTS = {name: info.default for name, info in Retention.model_fields.items()}
DEFAULT_DATABASE = "maskwatch"
# Table of each event written by the flow; each model field is a column of the same name.
EVENT_TABLES: dict[type[BaseModel], str] = {
    FrameResult: "frames",
    FaceDetection: "detections",
    Alert: "alerts",
    AlertEvent: "alert_events",
    CameraHealth: "camera_health",
    CameraHealthEvent: "camera_health_events",
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class StoreError(RuntimeError):
    """The store cannot be reached or is not in the expected state; the message says what to do."""


class _Target:
    """The store URL split into what clickhouse-connect needs, with the database held apart."""

    def __init__(self, url: str, password: str | None, timeout_s: float = 15.0,
                 connect_timeout_s: float = 3.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "chdb"):
            raise StoreError(f"store URL {redact_url(url)!r}: scheme must be http, https or chdb")
        query = parse_qsl(parts.query, keep_blank_values=True)
        database = next((v for k, v in query if k == "database"), None)
        path = parts.path
        if parts.scheme != "chdb" and not database and path.strip("/"):
            database, path = path.strip("/"), ""
        self.database = database or DEFAULT_DATABASE
        if not _IDENTIFIER.match(self.database):
            raise StoreError(f"store URL {redact_url(url)!r}: invalid database name {self.database!r}")
        rest = urlencode([(k, v) for k, v in query if k != "database"])
        self.dsn = urlunsplit((parts.scheme, parts.netloc, path, rest, ""))
        self.is_chdb = parts.scheme == "chdb"
        self.password = password
        self.display = redact_url(url)
        self.timeouts = (connect_timeout_s, timeout_s)

    def connect(self, database: str | None) -> Client:
        kwargs: dict[str, Any] = {"dsn": self.dsn, "database": database}
        if not self.is_chdb:
            # Stateless HTTP: no server session, so one client never trips over "session is locked".
            kwargs["autogenerate_session_id"] = False
            # The library waits 300 s for an answer by default: a hung (not dead) store would hold a flow
            # worker that long. Seconds, then the call fails and the caller's fallback (buffer) takes over.
            kwargs["connect_timeout"], kwargs["send_receive_timeout"] = self.timeouts
            if self.password:
                kwargs["password"] = self.password
        try:
            return clickhouse_connect.get_client(**kwargs)
        except Exception as exc:
            if database and "UNKNOWN_DATABASE" in str(exc):
                raise StoreError(
                    f"database {database!r} does not exist at {self.display}; run `maskwatch store migrate`"
                ) from None
            raise StoreError(f"cannot connect to the store at {self.display}: {exc}") from None


_local = threading.local()


def _target(settings: Settings | None) -> _Target:
    settings = settings or Settings()
    return _Target(settings.store_url, settings.store_password_value(), settings.store_timeout_s,
                   settings.store_connect_timeout_s)


def client(settings: Settings | None = None) -> Client:
    """A client on the URL's database, per thread: a clickhouse-connect client runs one query at a time."""
    target = _target(settings)
    identity = f"{target.dsn}\0{target.database}\0{target.password}\0{target.timeouts}"
    key = hashlib.sha256(identity.encode()).hexdigest()
    cache: dict[str, Client] = getattr(_local, "clients", None) or {}
    _local.clients = cache
    if key not in cache:
        cache[key] = target.connect(target.database)
    return cache[key]


def close_clients() -> None:
    """Drop this thread's cached clients (tests; a process switching stores)."""
    for cached in (getattr(_local, "clients", None) or {}).values():
        cached.close()
    _local.clients = {}


def database_name(settings: Settings | None = None) -> str:
    return _target(settings).database


def ttl_days() -> dict[str, int]:
    retention = Retention()
    return {f"ttl_days_{table}": getattr(retention, table) for table in TTL_DEFAULTS}


def render_sql(text: str, values: Mapping[str, object]) -> list[str]:
    """A migration's statements with ``{{name}}`` placeholders filled; an unknown placeholder is an error."""

    def fill(match: re.Match[str]) -> str:
        if match[1] not in values:
            raise StoreError(f"migration uses unknown placeholder {{{{{match[1]}}}}}")
        return str(values[match[1]])

    # Comments go first (they may contain ';'); migrations keep '--' out of string literals.
    body = _PLACEHOLDER.sub(fill, re.sub(r"--[^\n]*", "", text))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


def migrations(directory: Path = SQL_DIR) -> list[tuple[str, Path]]:
    """(``NNN_name``, file) in version order; a stray file name is an error, not silently skipped."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        if not _MIGRATION_FILE.match(path.name):
            raise StoreError(f"migration file {path.name!r} must be named NNN_lowercase_name.sql")
        found.append((path.stem, path))
    return found


def migrate(settings: Settings | None = None, directory: Path = SQL_DIR) -> list[str]:
    """Create the URL's database if missing, apply the migrations not yet recorded, return those applied.

    Several processes may migrate at once (each service calls this on start), so every statement in a
    migration must be idempotent (``IF NOT EXISTS``); the record table deduplicates itself."""
    target = _target(settings)
    admin = target.connect(None)
    try:
        admin.command(f"CREATE DATABASE IF NOT EXISTS `{target.database}`")
    finally:
        admin.close()
    db = client(settings)
    db.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version String, checksum String, "
        "applied_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"
    )
    rows = db.query("SELECT version, checksum FROM schema_migrations FINAL").result_rows
    done: dict[str, str] = {str(row[0]): str(row[1]) for row in rows}
    values = ttl_days()
    applied = []
    for version, path in migrations(directory):
        text = path.read_text()
        checksum = hashlib.sha256(text.encode()).hexdigest()
        if version in done:
            if done[version] != checksum:
                log.warning("migration %s was edited after it was applied; add a new one instead", version)
            continue
        for statement in render_sql(text, values):
            db.command(statement)
        db.insert("schema_migrations", [[version, checksum, datetime.now(UTC)]],
                  column_names=["version", "checksum", "applied_at"])
        log.info("store %s: applied migration %s", target.display, version)
        applied.append(version)
    return applied


def _cell(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


# Column types per (store, database, table): without them clickhouse-connect runs DESCRIBE TABLE before
# every insert, a second round trip to a store that runs one query at a time. Refreshed when a column is
# not in it, dropped when an insert fails (a migration may have changed the table).
_column_types: dict[tuple[str, str, str], dict[str, str]] = {}


def _types_of(db: Client, key: tuple[str, str, str], columns: Sequence[str]) -> list[str]:
    types = _column_types.get(key)
    if types is None or any(name not in types for name in columns):
        types = {str(row[0]): str(row[1]) for row in db.query(f"DESCRIBE TABLE `{key[2]}`").result_rows}
        _column_types[key] = types
    missing = [name for name in columns if name not in types]
    if missing:
        raise StoreError(f"insert into {key[2]}: no column(s) {missing} in the table")
    return [types[name] for name in columns]


def insert_rows(table: str, rows: Sequence[Mapping[str, Any]], settings: Settings | None = None) -> int:
    """Insert dict rows (all with the same keys = column names); nested dicts/models go in as JSON text."""
    if not rows:
        return 0
    if not _IDENTIFIER.match(table):
        raise StoreError(f"invalid table name {table!r}")
    columns = list(rows[0])
    data = []
    for number, row in enumerate(rows):
        if list(row) != columns:
            raise StoreError(f"insert into {table}: row {number} has columns {list(row)}, expected {columns}")
        data.append([_cell(row[name]) for name in columns])
    target = _target(settings)
    key = (target.dsn, target.database, table)
    db = client(settings)
    try:
        db.insert(table, data, column_names=columns, column_type_names=_types_of(db, key, columns))
    except Exception:
        _column_types.pop(key, None)
        raise
    return len(data)


def insert_models(table: str, models: Iterable[BaseModel], settings: Settings | None = None) -> int:
    """Insert pydantic events; each field is a column of the same name (see schemas/sql)."""
    return insert_rows(table, [dict(model) for model in models], settings)


def query_df(sql: str, parameters: Mapping[str, Any] | None = None,
             settings: Settings | None = None) -> pl.DataFrame:
    """Run a query (``{name:Type}`` server-side parameters) and return a polars DataFrame."""
    frame = pl.from_arrow(client(settings).query_arrow(sql, parameters=dict(parameters or {})))
    assert isinstance(frame, pl.DataFrame)
    return frame


def query_rows(sql: str, parameters: Mapping[str, Any] | None = None,
               settings: Settings | None = None) -> list[dict[str, Any]]:
    result = client(settings).query(sql, parameters=dict(parameters or {}))
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def command(sql: str, parameters: Mapping[str, Any] | None = None, settings: Settings | None = None) -> Any:
    return client(settings).command(sql, parameters=dict(parameters or {}))
