"""The embedded store: one chdb engine exposed over the ClickHouse HTTP interface.

chdb allows one process per data directory, so the flow, the dashboard and the CLI cannot each open it.
This server owns the directory and speaks enough of ClickHouse's HTTP protocol that every other process
uses ``clickhouse_connect.get_client(dsn='http://...')`` exactly as it would against a real server.

Per request: a fresh chdb connection handle (cheap, ~1 ms) gets ``USE`` + ``SET`` for the request's
database and settings, so nothing leaks between requests; ``session_id`` keeps a handle (and its
``USE``/``SET``/temporary tables) across requests. Requests on separate handles run in parallel (a slow
dashboard query does not hold up the flow's inserts); a session's requests run one at a time.

It serves nobody it does not know and nothing outside its tables: every request carries the store
password (checked before the body is read); a request whose ``Host`` is not this server's address or that
comes from a browser page (``Origin``, ``Sec-Fetch-*``) is refused (no CSRF, no DNS rebinding); every
statement goes through :mod:`maskwatch.store.sqlguard` (no ``file()``, ``url()``, ``remote()``,
``INTO OUTFILE``, ...); a GET runs read-only, as in ClickHouse; readers get a ``max_execution_time``; bodies,
connections, sessions and the time to send a request are bounded.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hmac
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP as HTTP_POLICY
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from maskwatch.config import Settings
from maskwatch.store.identities import DASHBOARD_USER, check_dashboard_sql
from maskwatch.store.sqlguard import UnsafeSql, check_sql, is_read

log = logging.getLogger(__name__)

LOCK_NAME = ".maskwatch-store.lock"
SESSION_TIMEOUT_S = 60.0
MAX_SESSION_TIMEOUT_S = 3600.0
MAX_SESSIONS = 256
MAX_CONNECTIONS = 64
# A request body as sent (compressed or not), and after decompression.
MAX_BODY_BYTES = 256 * 1024**2
MAX_DECOMPRESSED_BYTES = 1024**3
# Seconds a client has to send the request line and headers, and then the body.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 120.0
# Longest a read query may run (a dashboard page asking for too much), seconds.
READ_TIMEOUT_S = 60.0

# Request parameters that steer the HTTP layer; the rest are ClickHouse settings for the query.
_TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "session_id", "session_timeout", "session_check",
    "wait_end_of_query", "enable_http_compression", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "http_response_buffer_size", "http_wait_end_of_query",
    "client_protocol_version", "compress", "decompress", "buffer_size", "user", "password", "quota_key",
    "role", "cancel_http_readonly_queries_on_client_close", "http_zlib_compression_level",
})
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
# An INSERT whose data follows the statement: "INSERT INTO t (a, b) [SETTINGS ...] FORMAT Native\n<data>".
_INSERT_WITH_DATA = re.compile(
    rb"^\s*(INSERT\s+INTO\s+.*?)\bFORMAT\s+(\w+)[ \t]*(?:\r?\n|$)", re.IGNORECASE | re.DOTALL
)
_SELECT = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/|\()*(SELECT|WITH)\b", re.IGNORECASE | re.DOTALL)
_SETTINGS_CLAUSE = re.compile(r"\bSETTINGS\b", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
_BINARY_FORMATS = {"native", "rowbinary", "rowbinarywithnames", "rowbinarywithnamesandtypes", "arrow",
                   "arrowstream", "parquet", "orc", "avro", "msgpack", "protobuf"}


class StoreError(Exception):
    """A request failure reported ClickHouse-style: numeric code plus ``Code: N. DB::Exception: ...``."""

    def __init__(self, message: str, code: int = 36, name: str = "BAD_ARGUMENTS", status: int = 500):
        if not message.startswith("Code:"):
            message = f"Code: {code}. DB::Exception: {message}. ({name})"
        super().__init__(message)
        self.code = code
        self.status = status

    @classmethod
    def from_engine(cls, ex: Exception) -> StoreError:
        text = str(ex)
        start = text.find("Code: ")
        message = text[start:].strip() if start >= 0 else text.strip()
        match = _ERROR_CODE.search(message)
        return cls(message if match else f"Code: 1001. DB::Exception: {message}. (STD_EXCEPTION)",
                   code=int(match.group(1)) if match else 1001)


class DataDirBusy(RuntimeError):
    """Another live process already serves this chdb data directory."""


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Request:
    params: dict[str, str]
    body: bytes
    accept_encoding: str = ""
    read_only: bool = False  # a GET: nothing but reads, as ClickHouse does
    # The dashboard's identity (maskwatch.store.identities): reads without sources, a few inserts.
    dashboard: bool = False


@dataclass
class Response:
    body: bytes
    fmt: str | None
    summary: dict[str, str]
    query_id: str
    content_type: str = "text/plain; charset=UTF-8"


@dataclass
class _Session:
    conn: Any
    timeout: float
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # URL settings currently SET on the handle, and the values they replaced.
    applied: dict[str, str] = field(default_factory=dict)
    replaced: dict[str, tuple[str, bool]] = field(default_factory=dict)


def decompress(data: bytes, encoding: str, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Request bodies as clickhouse-connect (or curl) sends them: lz4 frame, zstd, gzip, deflate; never
    more than ``limit`` bytes once decompressed (a few KB can expand to gigabytes)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    source = io.BytesIO(data)
    try:
        if encoding == "lz4":
            import lz4.frame

            reader: Any = lz4.frame.open(source, "rb")
        elif encoding == "zstd":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(source)
        elif encoding in ("gzip", "deflate"):
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
            out = inflate.decompress(data, limit + 1)
            if len(out) > limit:
                raise StoreError(f"request body over {limit} bytes once decompressed", 241,
                                 "MEMORY_LIMIT_EXCEEDED", 413)
            return out
        else:
            raise StoreError(f"unsupported Content-Encoding {encoding!r} (supported: lz4, zstd, gzip, "
                             "deflate)", 48, "NOT_IMPLEMENTED")
        with reader:
            out = reader.read(limit + 1)
    except StoreError:
        raise
    except Exception as ex:
        raise StoreError(f"cannot decompress the request body as {encoding}: {ex}", 271,
                         "CANNOT_DECOMPRESS") from ex
    if len(out) > limit:
        raise StoreError(f"request body over {limit} bytes once decompressed", 241, "MEMORY_LIMIT_EXCEEDED",
                         413)
    return bytes(out)


def compress(data: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """Compress a response with the first encoding the client accepts that this server can write."""
    for raw in accept_encoding.split(","):
        encoding = raw.split(";")[0].strip().lower()
        if encoding == "lz4":
            import lz4.frame

            return bytes(lz4.frame.compress(data)), "lz4"
        if encoding == "zstd":
            import zstandard

            return zstandard.ZstdCompressor().compress(data), "zstd"
        if encoding == "gzip":
            return gzip.compress(data, compresslevel=3), "gzip"
        if encoding == "deflate":
            return zlib.compress(data, 3), "deflate"
    return data, None


class DataDirLock:
    """An exclusive ``flock`` on the data directory, held for the server's lifetime (freed if it dies)."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"store data directory {self.path.parent} is already served by another running process "
                f"(pid {owner}); chdb allows one process per directory. Stop it or use another --data-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Engine:
    """The chdb engine and the per-request protocol logic, independent of the HTTP plumbing."""

    def __init__(self, data_dir: Path):
        import chdb

        self._chdb = chdb
        self.data_dir = data_dir
        self._dir_lock = DataDirLock(data_dir)
        self._dir_lock.acquire()
        self.dsn = str(data_dir)
        # Guards the session table and the count of requests in flight; engine calls run outside it.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._closed = False
        self._sessions: dict[str, _Session] = {}
        self._tmp = data_dir / "tmp_inserts"
        self._tmp.mkdir(parents=True, exist_ok=True)
        for stale in self._tmp.glob("*.insert"):  # left by a server that was killed mid-insert
            stale.unlink(missing_ok=True)
        try:
            # This handle keeps the engine alive between requests.
            self._keeper = chdb.connect(self.dsn)
            info = self._keeper.query("SELECT version(), timezone()", "TabSeparated").bytes().decode()
            self.version, self.timezone = info.split("\t")
        except Exception:
            self._dir_lock.release()
            raise
        self.timezone = self.timezone.strip()

    def close(self, wait_s: float = 30.0) -> None:
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=wait_s)  # queries in flight finish
            for session in self._sessions.values():
                with contextlib.suppress(Exception):
                    session.conn.close()
            self._sessions.clear()
            with contextlib.suppress(Exception):
                self._keeper.close()
            self._dir_lock.release()

    # -- request execution -------------------------------------------------------------------------

    def execute(self, request: Request) -> Response:
        params = request.params
        query_id = params.get("query_id") or str(uuid.uuid4())
        sql, data = self._split(params.get("query", ""), request.body)
        if not sql.strip():
            raise StoreError("empty query", 62, "SYNTAX_ERROR")
        binds = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items()
                    if k not in _TRANSPORT_PARAMS and not k.startswith("param_")}
        for name in settings:
            if not _SETTING_NAME.match(name):
                raise StoreError(f"invalid setting name {name!r} in the request parameters")
        if params.get("decompress") in ("1", "true"):
            raise StoreError("decompress=1 (ClickHouse-native block compression) is not supported; "
                             "send Content-Encoding instead", 48, "NOT_IMPLEMENTED")
        try:
            check_sql(sql)
            if request.dashboard:
                check_dashboard_sql(sql)
        except UnsafeSql as ex:
            raise StoreError(str(ex), 497, "ACCESS_DENIED", 403) from None
        settings = self._limits(settings, sql, request.read_only)
        session_id = params.get("session_id")
        # What the dashboard reads cannot write, whatever it sets. (Not in a session: readonly = 2 cannot
        # be undone there, and the statement check above already lets only reads and plain inserts by.)
        if request.dashboard and is_read(sql) and not session_id and settings.get("readonly") != "1":
            settings["readonly"] = "2"
        if session_id and request.read_only:
            raise StoreError("sessions need POST (a GET is read-only)", 164, "READONLY", 403)
        with self._lock:
            if self._closed:
                raise StoreError("the store server is shutting down", 1001, "STD_EXCEPTION", 503)
            self._expire_sessions()
            session = self._session(session_id, params) if session_id else None
            self._in_flight += 1
        try:
            if session is not None:
                if not session.lock.acquire(timeout=BODY_TIMEOUT_S):
                    raise StoreError(f"Session {session_id} is locked by a concurrent client", 373,
                                     "SESSION_IS_LOCKED")
                try:
                    return self._run_in_session(session, sql, data, binds, settings, params, query_id)
                finally:
                    session.last_used = time.monotonic()
                    session.lock.release()
            conn = self._chdb.connect(self.dsn)
            try:
                self._use(conn, params.get("database"))
                for key, value in settings.items():
                    self._engine(conn, f"SET {key} = {_quote_value(value)}")
                return self._run(conn, sql, data, binds, params, query_id)
            finally:
                conn.close()
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.notify_all()

    @staticmethod
    def _limits(settings: dict[str, str], sql: str, read_only: bool) -> dict[str, str]:
        """The client's settings with the server's limits on top: readers get at most READ_TIMEOUT_S,
        a GET runs with readonly = 1 (set last, so nothing after it can lower it)."""
        out = {k: v for k, v in settings.items() if k not in ("readonly", "max_execution_time")}
        if read_only or is_read(sql):
            try:
                asked = float(settings.get("max_execution_time", "0"))
            except ValueError:
                raise StoreError("invalid max_execution_time") from None
            cap = READ_TIMEOUT_S if not (0 < asked < READ_TIMEOUT_S) else asked
            out["max_execution_time"] = f"{cap:g}"
        if read_only:
            out["readonly"] = "1"
        return out

    def _run_in_session(self, session: _Session, sql: str, data: bytes | None, binds: dict[str, str],
                        settings: dict[str, str], params: dict[str, str], query_id: str) -> Response:
        session.last_used = time.monotonic()
        self._use(session.conn, params.get("database"))  # every time: the client may have run USE itself
        # URL settings apply to the request; SET statements the client runs persist in the session.
        # clickhouse-connect sends the same settings with every request of a client, so they stay applied
        # while they are unchanged, and are swapped back to the replaced values when they change.
        if settings != session.applied:
            self._restore(session)
            session.replaced = self._snapshot(session.conn, settings)
            session.applied = dict(settings)
            try:
                for key, value in settings.items():
                    self._engine(session.conn, f"SET {key} = {_quote_value(value)}")
            except StoreError:
                self._restore(session)
                raise
        return self._run(session.conn, sql, data, binds, params, query_id)

    def _restore(self, session: _Session) -> None:
        for key, (value, changed) in session.replaced.items():
            restore = _quote_value(value) if changed else "DEFAULT"
            with contextlib.suppress(StoreError):
                self._engine(session.conn, f"SET {key} = {restore}")
        session.applied, session.replaced = {}, {}

    def _snapshot(self, conn: Any, settings: dict[str, str]) -> dict[str, tuple[str, bool]]:
        if not settings:
            return {}
        names = ", ".join(_quote_value(k) for k in settings)
        rows = self._engine(conn, f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})",
                            "JSONEachRow").bytes()
        found = {row["name"]: (row["value"], bool(row["changed"]))
                 for row in map(json.loads, rows.splitlines())}
        return {k: found.get(k, ("", False)) for k in settings}

    def _run(self, conn: Any, sql: str, data: bytes | None, binds: dict[str, str], params: dict[str, str],
             query_id: str) -> Response:
        if data is not None:
            return self._insert(conn, sql, data, query_id)
        match = _TRAILING_FORMAT.search(sql)
        fmt = match.group(1) if match else params.get("default_format") or "TabSeparated"
        # Like ClickHouse, report X-ClickHouse-Format only for statements that produce a result set:
        # with names, a result set has at least the header line, a DDL statement prints nothing.
        probe = match is None and fmt == "TabSeparated"
        result = self._engine(conn, sql, "TabSeparatedWithNames" if probe else fmt, binds)
        body = result.bytes() or b""
        if not body and match is not None and fmt == "Native" and _SELECT.match(sql):
            body = self._empty_native(conn, sql[: match.start()], binds)
        result_fmt: str | None = fmt
        if probe:
            newline = body.find(b"\n")
            if body:
                body = body[newline + 1:] if newline >= 0 else b""
            else:
                result_fmt = None
        summary = _summary(result, read=True)
        summary["result_bytes"] = str(len(body))
        content_type = ("application/octet-stream" if fmt.lower() in _BINARY_FORMATS
                        else "text/plain; charset=UTF-8")
        return Response(body, result_fmt, summary, query_id, content_type)

    def _empty_native(self, conn: Any, select: str, binds: dict[str, str]) -> bytes:
        """The header-only Native block ClickHouse sends for an empty result (chdb sends nothing), so
        clients still get column names and types: an empty DataFrame keeps its columns."""
        try:
            described = self._engine(conn, f"DESCRIBE (\n{select.rstrip().rstrip(';')}\n)", "JSONEachRow",
                                     binds).bytes()
        except StoreError:
            return b""
        columns = [json.loads(line) for line in described.splitlines()]
        block = _varuint(len(columns)) + _varuint(0)
        for column in columns:
            # Zero rows carry zero bytes of column data in Native.
            block += _native_string(column["name"]) + _native_string(column["type"])
        return block

    def _insert(self, conn: Any, statement: str, data: bytes, query_id: str) -> Response:
        """Feed INSERT data through a temp file, the way chdb ingests a binary (Native) payload."""
        match = _INSERT_WITH_DATA.match(statement.encode())
        if match is None:  # _split only sends data here for statements that matched
            raise StoreError("INSERT data without an INSERT ... FORMAT statement")
        head, fmt = match.group(1).decode().strip(), match.group(2).decode()
        settings_clause = ""
        at = _SETTINGS_CLAUSE.search(head)
        if at:
            head, settings_clause = head[: at.start()].strip(), head[at.start():].strip()
        fd, path = tempfile.mkstemp(suffix=".insert", dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            sql = f"{head} FROM INFILE {_quote_value(path)} {settings_clause} FORMAT {fmt}"
            result = self._engine(conn, sql)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return Response(b"", None, _summary(result, read=False), query_id)

    @staticmethod
    def _split(query_param: str, body: bytes) -> tuple[str, bytes | None]:
        """(SQL, INSERT data or None) from the ``query`` parameter and the request body."""
        if query_param:
            if body and _INSERT_WITH_DATA.match(query_param.encode() + b"\n"):
                return query_param, body
            if not body:
                return query_param, None
            return query_param + "\n" + _text(body), None
        match = _INSERT_WITH_DATA.match(body[:65536])
        if match:
            return body[: match.end()].decode(errors="replace"), body[match.end():]
        return _text(body), None

    def _session(self, session_id: str, params: dict[str, str]) -> _Session:
        """The session (under self._lock); a new one within the limits on count and lifetime."""
        if not _SESSION_ID.match(session_id):
            raise StoreError("invalid session_id (letters, digits, '-' and '_', at most 128)")
        session = self._sessions.get(session_id)
        if session is None:
            if params.get("session_check") in ("1", "true"):
                raise StoreError(f"Session {session_id} not found", 372, "SESSION_NOT_FOUND")
            raw = params.get("session_timeout") or str(SESSION_TIMEOUT_S)
            try:
                timeout = float(raw)
            except ValueError:
                timeout = float("nan")
            if not 0 < timeout <= MAX_SESSION_TIMEOUT_S:  # also refuses nan and inf
                raise StoreError(f"invalid session_timeout {raw[:40]!r}: expected seconds in "
                                 f"(0, {MAX_SESSION_TIMEOUT_S:g}]")
            if len(self._sessions) >= MAX_SESSIONS:
                raise StoreError(f"too many sessions ({MAX_SESSIONS}); close some or wait for them to expire",
                                 202, "TOO_MANY_SIMULTANEOUS_QUERIES", 503)
            session = _Session(self._chdb.connect(self.dsn), timeout)
            self._sessions[session_id] = session
        return session

    def _expire_sessions(self) -> None:
        now = time.monotonic()
        for key, session in list(self._sessions.items()):
            if now - session.last_used > session.timeout and session.lock.acquire(blocking=False):
                with contextlib.suppress(Exception):
                    session.conn.close()
                del self._sessions[key]
                session.lock.release()

    def _use(self, conn: Any, database: str | None) -> None:
        if database:
            self._engine(conn, f"USE {_quote_ident(database)}")

    @staticmethod
    def _engine(conn: Any, sql: str, fmt: str = "TabSeparated", binds: dict[str, str] | None = None) -> Any:
        try:
            return conn.query(sql, fmt, params=binds or {})
        except Exception as ex:
            raise StoreError.from_engine(ex) from ex


def _varuint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _native_string(text: str) -> bytes:
    raw = text.encode()
    return _varuint(len(raw)) + raw


def _text(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError as ex:
        raise StoreError(f"the query text is not valid UTF-8 ({ex})", 27, "CANNOT_PARSE_INPUT") from ex


def _summary(result: Any, read: bool) -> dict[str, str]:
    try:
        rows, size, elapsed = result.rows_read(), result.bytes_read(), result.elapsed()
    except Exception:
        return {}
    keys = ("read_rows", "read_bytes") if read else ("written_rows", "written_bytes")
    return {keys[0]: str(rows), keys[1]: str(size), "elapsed_ns": str(int(elapsed * 1e9))}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "maskwatch-store"
    # Headers and body go out in separate writes: with Nagle on, each response waits ~40 ms for an ACK.
    disable_nagle_algorithm = True
    # Each read from the socket; the deadlines below bound the whole request line + headers, and body.
    timeout = HEADER_TIMEOUT_S
    server: _Server
    _deadline: threading.Timer | None = None

    def _abort(self) -> None:
        """Past a deadline: end the connection (a client dripping bytes must not hold a thread)."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = threading.Timer(seconds, self._abort)
        self._deadline.daemon = True
        self._deadline.start()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def handle_one_request(self) -> None:
        self._arm(HEADER_TIMEOUT_S)
        try:
            super().handle_one_request()
        finally:
            self._disarm()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _refuse(self, ex: StoreError) -> None:
        """Answer without reading the body, and end the connection (its unread bytes are not a request)."""
        self.close_connection = True
        self._error(ex)

    def _handle(self) -> None:
        self._disarm()  # request line and headers are in
        url = urlsplit(self.path)
        problem = self._foreign()
        if problem:
            self._refuse(StoreError(problem, 497, "ACCESS_DENIED", 403))
            return
        if url.path in ("/ping", "/replicas_status"):
            self.close_connection = self.close_connection or bool(self.headers.get("Content-Length"))
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if url.path not in ("/", ""):
            self._refuse(StoreError(f"unknown HTTP path {url.path[:100]!r}; use / or /ping", 0, "UNKNOWN",
                                    404))
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        user = self._authorized(params)
        if user is None:
            self._refuse(StoreError("Code: 516. DB::Exception: Authentication failed: password is incorrect. "
                                    "(AUTHENTICATION_FAILED)", 516, status=403))
            return
        try:
            self._arm(BODY_TIMEOUT_S)
            try:
                body = self._read_body()
            finally:
                self._disarm()
        except StoreError as ex:
            self._refuse(ex)
            return
        try:
            body = decompress(body, self.headers.get("Content-Encoding", ""))
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                body = self._form(content_type, body, params)
            response = self.server.engine.execute(Request(params, body, read_only=self.command == "GET",
                                                          dashboard=user == DASHBOARD_USER))
        except StoreError as ex:
            self._error(ex)
            return
        except Exception as ex:  # never drop the connection without a ClickHouse-style answer
            log.exception("store request failed")
            self._error(StoreError(f"{type(ex).__name__}: {ex}", 1001, "STD_EXCEPTION"))
            return
        headers = {
            "Content-Type": response.content_type,
            "X-ClickHouse-Query-Id": response.query_id,
            "X-ClickHouse-Timezone": self.server.engine.timezone,
            "X-ClickHouse-Summary": json.dumps(response.summary),
            "X-ClickHouse-Server-Display-Name": "maskwatch-store",
        }
        if response.fmt:
            headers["X-ClickHouse-Format"] = response.fmt
        payload = response.body
        # The engine's enable_http_compression defaults to 1 (clients read it from system.settings), so
        # compress whenever the client accepts an encoding unless the request turns it off.
        if params.get("enable_http_compression", "1") not in ("0", "false") and payload:
            payload, encoding = compress(payload, self.headers.get("Accept-Encoding", ""))
            if encoding:
                headers["Content-Encoding"] = encoding
        self._send(200, payload, headers)

    def _foreign(self) -> str:
        """Why the request does not come from a client of this server ('' when it does): a browser page
        (it sends Origin / Sec-Fetch-*: cross-site requests and DNS rebinding), or a Host that is not the
        address this server is bound to."""
        if any(self.headers.get(h) is not None for h in ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode")):
            return "requests from web pages are refused (Origin / Sec-Fetch-* header)"
        host = (self.headers.get("Host") or "").strip().lower()
        if self.server.allowed_hosts is not None and host not in self.server.allowed_hosts:
            return f"Host {host[:100]!r} is not this server's address"
        return ""

    def _authorized(self, params: dict[str, str]) -> str | None:
        """Who sent the request (None: nobody this server knows), from ClickHouse's ways of sending a
        user and password: Basic auth, X-ClickHouse-User/Key, or the ``user``/``password`` parameters.
        ``maskwatch_dashboard`` has its own password; any other name is the store's own user (there is
        one), as before users existed. There is always a password."""
        user = self.headers.get("X-ClickHouse-User") or params.get("user") or ""
        given = self.headers.get("X-ClickHouse-Key") or params.get("password") or ""
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, given = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
        if user == DASHBOARD_USER:
            expected = self.server.dashboard_password
            if expected is None:
                return None
        else:
            user, expected = "", self.server.password
        return user if hmac.compare_digest(given.encode(), expected.encode()) else None

    def _read_body(self) -> bytes:
        too_big = StoreError(f"request body over {MAX_BODY_BYTES} bytes", 241, "MEMORY_LIMIT_EXCEEDED", 413)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            for chunk in self._chunks():
                total += len(chunk)
                if total > MAX_BODY_BYTES:
                    raise too_big
                chunks.append(chunk)
            return b"".join(chunks)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise StoreError(f"invalid Content-Length {length[:40]!r}") from None
        if size < 0:
            raise StoreError(f"invalid Content-Length {length[:40]!r}")
        if size > MAX_BODY_BYTES:
            raise too_big
        body = self.rfile.read(size)
        if len(body) < size:
            raise StoreError("request body ended before its Content-Length")
        return body

    def _chunks(self) -> Iterator[bytes]:
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise StoreError(f"malformed chunked request body (chunk header {line[:40]!r})") from None
            if size < 0 or size > MAX_BODY_BYTES:
                raise StoreError(f"request body over {MAX_BODY_BYTES} bytes", 241, "MEMORY_LIMIT_EXCEEDED",
                                 413)
            if size == 0:
                for _ in range(100):  # trailers, a bounded number of them
                    if self.rfile.readline(65537) in (b"\r\n", b"\n", b""):
                        break
                return
            yield self.rfile.read(size)
            self.rfile.readline(3)

    @staticmethod
    def _form(content_type: str, body: bytes, params: dict[str, str]) -> bytes:
        """Form-encoded queries: ``query`` and ``param_*`` fields become parameters; no external data."""
        message = BytesParser(policy=HTTP_POLICY).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                raise StoreError("external data tables are not supported by the embedded store", 48,
                                 "NOT_IMPLEMENTED")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                params[name] = payload.decode()
        return b""

    def _error(self, ex: StoreError) -> None:
        self._send(ex.status, (str(ex) + "\n").encode(), {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(ex.code),
        })

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = MAX_CONNECTIONS

    def __init__(self, address: tuple[str, int], engine: Engine, password: str,
                 dashboard_password: str | None = None):
        if not password or dashboard_password == "":
            raise ValueError("the store server needs a password")
        if dashboard_password == password:
            raise ValueError("the dashboard's store password must differ from the store's own")
        self.engine = engine
        self.password = password
        self.dashboard_password = dashboard_password
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)
        host, port = str(self.server_address[0]), int(self.server_address[1])
        # The names this server answers to. Bound to every interface it cannot know them: then only the
        # browser-page check guards it (bind 127.0.0.1, the default, to keep DNS rebinding out too).
        if host in ("0.0.0.0", "::", ""):
            self.allowed_hosts: set[str] | None = None
        else:
            names = {host, f"[{host}]" if ":" in host else host}
            if host in ("127.0.0.1", "::1", "localhost"):
                names |= {"127.0.0.1", "localhost", "[::1]"}
            self.allowed_hosts = {f"{n}:{port}" for n in names} | (names if port == 80 else set())

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, at most MAX_CONNECTIONS; past that a short 503 and the door closes."""
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response (timeout, Ctrl-C) is routine, not a server fault.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s disconnected", client_address)
            return
        log.exception("store server: unexpected error serving %s", client_address)


def serve(host: str, port: int, data_dir: str) -> None:
    """Serve the chdb engine at ``data_dir`` on ``http://host:port`` until SIGTERM/SIGINT.

    Every request but ``/ping`` must carry the password MASKWATCH_STORE_PASSWORD(_FILE) says; without one
    the server does not start (``maskwatch services up`` makes one under ``$MASKWATCH_HOME/secrets``).
    With MASKWATCH_STORE_DASHBOARD_PASSWORD(_FILE) it also serves the dashboard's read-mostly user,
    ``maskwatch_dashboard`` (``maskwatch.store.identities``).
    """
    settings = Settings()
    password = settings.store_password_value()
    if not password:
        raise SystemExit("store serve: no password: set MASKWATCH_STORE_PASSWORD_FILE (or "
                         "MASKWATCH_STORE_PASSWORD); `maskwatch services up` creates one in "
                         "$MASKWATCH_HOME/secrets/store_password. The store serves nobody without it.")
    path = Path(data_dir).resolve()
    try:
        engine = Engine(path)
    except DataDirBusy as ex:
        raise SystemExit(f"store serve: {ex}") from None
    try:
        server = _Server((host, port), engine, password, settings.store_dashboard_password_value())
    except ValueError as ex:
        engine.close()
        raise SystemExit(f"store serve: {ex}") from None
    except OSError as ex:
        engine.close()
        raise SystemExit(f"store serve: cannot listen on {host}:{port}: {ex.strerror or ex}") from None

    def stop(signum: int, _frame: object) -> None:
        log.info("store server: signal %d, shutting down", signum)
        # shutdown() waits for serve_forever to return, so it must not run on serve_forever's thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("store server on http://%s:%d (chdb %s, data %s)", host, port, engine.version, path)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()  # waits for the query in flight (engine lock), then frees the directory
        log.info("store server stopped")
