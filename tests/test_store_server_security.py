"""The embedded store server as an attacker on the same machine (or a web page in its browser) meets it:
the real `maskwatch store serve` and chdb engine, raw HTTP where a client library would be too polite."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from maskwatch import store
from maskwatch.config import Settings
from maskwatch.devservices.store import StoreService
from maskwatch.store import server as store_server_module

from tests.test_store_server import connect, key

pytestmark = pytest.mark.without_models


def request(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None
) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def raw(port: int, head: bytes, wait_s: float = 30) -> bytes:
    """Send bytes as they are and return what comes back before the server closes or ``wait_s``."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"Content-Length: " in out:
                    length = int(out.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    if len(out.split(b"\r\n\r\n", 1)[1]) >= length:
                        break
        except TimeoutError:
            pass
        return out


@pytest.fixture
def port(store_server: StoreService) -> int:
    return int(urlsplit(store_server.url).port or 0)


def test_no_credential_no_query(store_server: StoreService) -> None:
    status, body = request(f"{store_server.url}/?query={quote('SELECT version()')}")
    assert status == 403 and "AUTHENTICATION_FAILED" in body
    status, body = request(
        f"{store_server.url}/?query={quote('SELECT 1')}", headers={"X-ClickHouse-Key": "x"}
    )
    assert status == 403
    assert request(f"{store_server.url}/?query={quote('SELECT 1')}", headers=key()) == (200, "1\n")


def test_the_credential_is_checked_before_the_body_is_read(port: int) -> None:
    # Headers promise 50 MB that never come: without the password the answer comes at once.
    head = (
        f"POST /?query=INSERT HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 50000000\r\n\r\n".encode()
    )
    answer = raw(port, head, wait_s=8)
    assert answer.startswith(b"HTTP/1.1 403") and b"AUTHENTICATION_FAILED" in answer


def test_a_server_without_a_password_does_not_start(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKWATCH_STORE_PASSWORD")}
    env["MASKWATCH_HOME"] = str(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskwatch.cli",
            "store",
            "serve",
            "--port",
            "1",
            "--data-dir",
            str(tmp_path / "chdb"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "no password" in out.stderr and not (tmp_path / "chdb").exists()


def test_services_up_makes_a_private_credential_every_local_process_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maskwatch.ports import free_port

    monkeypatch.delenv("MASKWATCH_STORE_PASSWORD_FILE", raising=False)
    monkeypatch.delenv("MASKWATCH_STORE_PASSWORD", raising=False)
    monkeypatch.setenv("MASKWATCH_HOME", str(tmp_path))
    service = StoreService(home=tmp_path, port=free_port(), attached=True)
    service.start()
    try:
        assert service.credential.stat().st_mode & 0o777 == 0o600
        monkeypatch.setenv("MASKWATCH_STORE_URL", f"{service.url}/?database=mine")
        assert Settings().store_password_value() == service.credential.read_text().strip()
        store.migrate()  # a local process, no password given: it finds the credential
        assert store.query_rows("SELECT 1 AS one") == [{"one": 1}]
        # A store elsewhere never gets the local credential.
        monkeypatch.setenv("MASKWATCH_STORE_URL", "https://store.example:8443/?database=x")
        assert Settings().store_password_value() is None
    finally:
        store.close_clients()
        service.stop()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
        r"SELECT * FROM `fil\x65`('/etc/passwd', 'LineAsString')",  # ClickHouse decodes \x65: file()
        r"""SELECT * FROM "\x75rl"('http://127.0.0.1:1/', 'LineAsString')""",
        r"CREATE TABLE evil2 (s String) ENGINE = `Fil\x65`(TSV)",
        "select * from FILE('/etc/passwd', 'LineAsString')",
        "SELECT file('/etc/passwd')",
        "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
        "SELECT * FROM remote('127.0.0.1', system.one)",
        "SELECT * FROM s3('http://127.0.0.1:1/b/k', 'CSV')",
        "SELECT * FROM executable('id', 'TSV', 'x String')",
        "SELECT * FROM mysql('127.0.0.1:3306', 'd', 't', 'u', 'p')",
        "SELECT * FROM postgresql('127.0.0.1:5432', 'd', 't', 'u', 'p')",
        "SELECT 1 INTO OUTFILE '/tmp/maskwatch-outfile'",
        "CREATE TABLE evil (s String) ENGINE = File(TSV)",
        "SYSTEM SHUTDOWN",
        "SELECT 1 SETTINGS max_execution_time = 0",
    ],
)
def test_sql_cannot_reach_files_the_network_or_the_server(store_server: StoreService, sql: str) -> None:
    status, body = request(f"{store_server.url}/", data=sql.encode(), headers=key())
    assert status == 403 and "ACCESS_DENIED" in body, body
    assert "root:" not in body


def test_insert_into_a_file_function_writes_nothing(store_server: StoreService, tmp_path: Path) -> None:
    target = tmp_path / "authorized_keys"
    sql = f"INSERT INTO FUNCTION file('{target}', 'LineAsString') SELECT 'ssh-ed25519 AAAA attacker'"
    status, _ = request(f"{store_server.url}/", data=sql.encode(), headers=key())
    assert status == 403 and not target.exists()
    # ... also with its data in the body, as clickhouse-connect sends an insert.
    sql = quote(f"INSERT INTO FUNCTION file('{target}', 'LineAsString') FORMAT LineAsString")
    status, _ = request(
        f"{store_server.url}/?query={sql}", data=b"ssh-ed25519 AAAA attacker\n", headers=key()
    )
    assert status == 403 and not target.exists()


def test_get_is_read_only(store_server: StoreService, db: str) -> None:
    client = connect(db)
    client.command("CREATE TABLE keep (a UInt8) ENGINE = Memory")
    database = db.split("database=")[1]
    for sql in (
        "DROP TABLE keep",
        "INSERT INTO keep VALUES (1)",
        "CREATE TABLE more (a UInt8) ENGINE = Memory",
    ):
        status, body = request(
            f"{store_server.url}/?database={database}&query={quote(sql)}&readonly=0", headers=key()
        )
        assert status != 200 and "READONLY" in body, body
    assert client.command("EXISTS TABLE keep") == 1
    status, body = request(
        f"{store_server.url}/?database={database}&query={quote('SELECT count() FROM keep')}", headers=key()
    )
    assert (status, body) == (200, "0\n")


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
        {"Host": "evil.example"},  # DNS rebinding: the page's own name pointing at 127.0.0.1
        {"Host": "127.0.0.1.evil.example:18123"},
    ],
)
def test_web_pages_and_foreign_host_names_are_refused(
    store_server: StoreService, headers: dict[str, str]
) -> None:
    # A simple POST a page can send cross-site without a preflight (text/plain), even with the password.
    status, body = request(
        f"{store_server.url}/", data=b"SELECT 1", headers={"Content-Type": "text/plain", **key(), **headers}
    )
    assert status == 403 and "ACCESS_DENIED" in body, body


def test_bodies_are_bounded_before_and_after_decompression(store_server: StoreService, port: int) -> None:
    limit = store_server_module.MAX_BODY_BYTES
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-ClickHouse-Key: {key()['X-ClickHouse-Key']}\r\n"
        f"Content-Length: {limit + 1}\r\n\r\n"
    ).encode()
    answer = raw(port, head, wait_s=10)
    assert answer.startswith(b"HTTP/1.1 413")
    # A gzip bomb: about 1 MB on the wire, more than the decompression limit inside.
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(16 * 1024**2)
    parts = [
        packer.compress(zeros) for _ in range(store_server_module.MAX_DECOMPRESSED_BYTES // len(zeros) + 2)
    ]
    bomb = b"".join(parts) + packer.flush()
    assert len(bomb) < 8 * 1024**2
    status, body = request(
        f"{store_server.url}/?query={quote('INSERT INTO x FORMAT TSV')}",
        data=bomb,
        headers={"Content-Encoding": "gzip", **key()},
    )
    assert status == 413 and "decompressed" in body


def test_a_client_dripping_its_headers_is_cut_off(store_server: StoreService, port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 3 * store_server_module.HEADER_TIMEOUT_S:
            try:
                sock.sendall(b"X-Drip: a\r\n")
                if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            time.sleep(1)
    assert closed, "the server kept a connection that never finished its headers"


def test_connections_are_capped_and_the_next_one_is_told_so(store_server: StoreService, port: int) -> None:
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(store_server_module.MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)
        answer = raw(port, b"", wait_s=5)
        assert answer.startswith(b"HTTP/1.1 503")
    finally:
        for sock in idle:
            sock.close()
    # Once they are gone the server answers again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, _ = request(f"{store_server.url}/?query={quote('SELECT 1')}", headers=key())
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200


@pytest.mark.parametrize("timeout", ["inf", "nan", "-1", "0", "1e9", "soon"])
def test_session_timeouts_are_bounded(store_server: StoreService, timeout: str) -> None:
    url = f"{store_server.url}/?session_id=s-{uuid.uuid4().hex}&session_timeout={timeout}"
    status, body = request(url, data=b"SELECT 1", headers=key())
    assert status != 200 and "session_timeout" in body


def test_a_slow_reader_does_not_hold_up_inserts_and_readers_are_capped(
    store_server: StoreService, db: str
) -> None:
    client = connect(db)
    client.command("CREATE TABLE rows (a UInt32) ENGINE = MergeTree ORDER BY a")
    slow = threading.Thread(
        target=lambda: connect(db).command(
            "SELECT sum(sleepEachRow(1)) FROM numbers(3) SETTINGS max_block_size = 1"
        )
    )
    slow.start()
    try:
        time.sleep(0.3)
        connect(db).insert("rows", [[1], [2]], column_names=["a"])
        assert slow.is_alive(), "the insert waited for the slow query"
    finally:
        slow.join(30)
    assert client.command("SELECT count() FROM rows") == 2
    cap = store_server_module.READ_TIMEOUT_S

    def limit(**settings: int) -> float:
        return float(str(connect(db, settings=settings).command("SELECT getSetting('max_execution_time')")))

    assert limit() == cap and limit(max_execution_time=5) == 5 and limit(max_execution_time=0) == cap
