"""The embedded store server against the real clickhouse-connect HTTP client and the real chdb engine."""

from __future__ import annotations

import datetime as dt
import gzip
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import clickhouse_connect
import pandas as pd
import pyarrow as pa
import pytest
import zstandard
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from maskwatch.config import Settings
from maskwatch.devservices.process import ServiceError
from maskwatch.devservices.store import StoreService
from maskwatch.ports import free_port

pytestmark = pytest.mark.without_models

UTC = dt.UTC
TYPES_DDL = """
CREATE TABLE frames (
    camera_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    score Float32,
    faces Nullable(UInt16),
    labels Array(String),
    note Nullable(String)
) ENGINE = MergeTree ORDER BY (camera_id, ts)
"""


def connect(url: str, **kwargs: Any) -> Client:
    """A client for ``http://host:port/?database=X`` (clickhouse-connect 1.12 rejects ``database`` in a DSN
    query string, so it is passed as an argument)."""
    parts = urlsplit(url)
    database = parse_qs(parts.query).get("database", [None])[0]
    kwargs.setdefault("password", Settings().store_password_value())  # the session's (conftest)
    return clickhouse_connect.get_client(host=parts.hostname, port=parts.port, database=database, **kwargs)


def key() -> dict[str, str]:
    """The header clickhouse-connect and curl send the password in (the session's, from conftest)."""
    return {"X-ClickHouse-Key": Settings().store_password_value() or ""}


COLUMNS = ["camera_id", "ts", "score", "faces", "labels", "note"]


def _rows(n: int, camera: str = "cam-1") -> list[list[object]]:
    base = dt.datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
    return [
        [camera, base + dt.timedelta(milliseconds=250 * i), i / 4, None if i % 3 == 0 else i,
         [f"l{j}" for j in range(i % 4)], None if i % 2 else f"n{i}"]
        for i in range(n)
    ]


@pytest.mark.parametrize("compress", [False, "lz4", "zstd", "gzip"])
def test_types_round_trip_with_each_compression(db: str, compress: str | bool) -> None:
    client = connect(db, compress=compress)
    client.command(TYPES_DDL)
    rows = _rows(50)
    summary = client.insert("frames", rows, column_names=COLUMNS)
    assert summary.written_rows == 50

    got = client.query("SELECT camera_id, ts, score, faces, labels, note FROM frames ORDER BY ts").result_rows
    assert len(got) == 50
    for want, have in zip(rows, got, strict=True):
        assert have[0] == want[0]
        assert have[1].replace(tzinfo=UTC) == want[1]  # DateTime64(3) keeps the milliseconds
        assert have[2] == pytest.approx(want[2])
        assert have[3] == want[3] and list(have[4]) == want[4] and have[5] == want[5]

    columns = client.query("SELECT name, type FROM system.columns "
                           "WHERE database = currentDatabase() AND table = 'frames'").result_rows
    types = {str(name): str(kind) for name, kind in columns}
    assert types["camera_id"] == "LowCardinality(String)" and types["score"] == "Float32"

    # LIMIT 0 is a columns-only probe (FORMAT JSON metadata) in clickhouse-connect.
    empty = client.query("SELECT camera_id, ts FROM frames LIMIT 0")
    assert empty.column_names == ("camera_id", "ts") and empty.result_rows == []
    # Any other empty result still names its columns (a header-only Native block, as ClickHouse sends).
    none = client.query("-- nothing matches\nSELECT camera_id, score, labels FROM frames "
                        "WHERE score < {s:Float32}", parameters={"s": -1})
    assert none.column_names == ("camera_id", "score", "labels") and none.result_rows == []
    assert [t.name for t in none.column_types] == ["LowCardinality(String)", "Float32", "Array(String)"]

    frame = client.query_df("SELECT camera_id, faces, score FROM frames ORDER BY ts")
    assert list(frame.columns) == ["camera_id", "faces", "score"]
    assert len(frame) == 50 and int(frame["faces"].isna().sum()) == 17

    table = client.query_arrow("SELECT count() AS n, sum(length(labels)) AS l FROM frames")
    assert table.column("n").to_pylist() == [50]
    assert table.column("l").to_pylist() == [sum(i % 4 for i in range(50))]


def test_arrow_and_dataframe_inserts_and_block_streams(db: str) -> None:
    client = connect(db, compress="lz4")
    client.command("CREATE TABLE a (k String, v Float64, ts Nullable(DateTime64(3, 'UTC')), "
                   "tags Array(LowCardinality(String))) ENGINE = MergeTree ORDER BY k")
    client.insert_arrow("a", pa.table({
        "k": ["x", "y"], "v": [1.0, 2.0],
        "ts": pa.array([None, 1_700_000_000_123], pa.timestamp("ms", "UTC")), "tags": [["a"], []],
    }))
    client.insert_df("a", pd.DataFrame({"k": ["z"], "v": [3.5], "ts": [pd.Timestamp("2026-01-01", tz="UTC")],
                                        "tags": [["q", "r"]]}))
    rows = client.query("SELECT k, v, ts, tags FROM a ORDER BY k").result_rows
    assert [(k, v, list(tags)) for k, v, _, tags in rows] == [("x", 1.0, ["a"]), ("y", 2.0, []),
                                                              ("z", 3.5, ["q", "r"])]
    assert rows[0][2] is None
    assert rows[1][2].replace(tzinfo=UTC) == dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    with client.query_row_block_stream("SELECT number FROM numbers(100000)") as stream:
        assert sum(row[0] for block in stream for row in block) == sum(range(100000))
    assert client.raw_query("SELECT k FROM a ORDER BY k FORMAT JSONEachRow") == \
        b'{"k":"x"}\n{"k":"y"}\n{"k":"z"}\n'


def test_server_side_parameters_settings_and_command(db: str) -> None:
    client = connect(db)
    client.command(TYPES_DDL)
    client.insert("frames", _rows(8, "cam'1") + _rows(4, "cam-2"),
                  column_names=COLUMNS)
    # {name:Type} placeholders are bound by the engine from param_* request parameters.
    count = client.query("SELECT count() FROM frames WHERE camera_id = {cam:String} AND score >= {s:Float32}",
                         parameters={"cam": "cam'1", "s": 0.5}).result_rows[0][0]
    assert count == 6
    assert client.command("SELECT count() FROM frames WHERE camera_id = {cam:String}",
                          parameters={"cam": "cam-2"}) == 4
    # A per-query setting reaches the engine and does not leak into the next request.
    default = client.query("SELECT getSetting('max_block_size')").result_rows[0][0]
    assert client.query("SELECT getSetting('max_block_size')",
                        settings={"max_block_size": 1234}).result_rows[0][0] == 1234
    assert client.query("SELECT getSetting('max_block_size')").result_rows[0][0] == default != 1234
    # Settings on the client apply to every request.
    tuned = connect(db, settings={"max_block_size": 4321})
    assert tuned.command("SELECT getSetting('max_block_size')") == 4321
    # DDL through command(): no result set, so a summary rather than a value.
    result = client.command("CREATE TABLE other (x UInt8) ENGINE = Memory")
    assert not isinstance(result, (str, int))
    assert client.command("EXISTS TABLE other") == 1


def test_session_keeps_state_between_requests(store_server: StoreService, db: str) -> None:
    session = connect(db, session_id=f"s-{uuid.uuid4().hex}")
    session.command("SET max_block_size = 777")
    session.command("CREATE TEMPORARY TABLE scratch (x UInt32)")
    session.command("INSERT INTO scratch VALUES (1), (2), (3)")
    assert session.command("SELECT getSetting('max_block_size')") == 777
    assert session.command("SELECT sum(x) FROM scratch") == 6
    # A per-request setting in a session applies to that request only; the session's SET remains.
    assert session.query("SELECT getSetting('max_block_size')",
                         settings={"max_block_size": 99}).result_rows[0][0] == 99
    assert session.command("SELECT getSetting('max_block_size')") == 777
    other = connect(db)
    assert other.command("SELECT getSetting('max_block_size')") != 777
    with pytest.raises(DatabaseError, match="scratch"):
        other.command("SELECT sum(x) FROM scratch")
    # session_check refuses an unknown session, as ClickHouse does.
    req = urllib.request.Request(f"{store_server.url}/?session_id=nope-{uuid.uuid4().hex}&session_check=1",
                                 data=b"SELECT 1", headers=key())
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.headers["X-ClickHouse-Exception-Code"] == "372"


def test_errors_surface_as_database_errors(store_server: StoreService, db: str) -> None:
    client = connect(db)
    with pytest.raises(DatabaseError) as info:
        client.query("SELECT * FROM no_such_table")
    assert "no_such_table" in str(info.value) and "UNKNOWN_TABLE" in str(info.value)
    assert info.value.code == 60
    with pytest.raises(DatabaseError, match="SYNTAX_ERROR"):
        client.command("SELEKT 1")
    client.command("CREATE TABLE t (x UInt8) ENGINE = Memory")
    with pytest.raises(DatabaseError):
        client.raw_insert("t", ["x"], insert_block=b"not-a-number\n", fmt="CSV")
    assert client.command("SELECT count() FROM t") == 0
    # The server keeps serving after errors.
    assert client.command("SELECT 1") == 1
    with pytest.raises(DatabaseError, match="UNKNOWN_DATABASE"):
        connect(f"{store_server.url}/?database=missing_{uuid.uuid4().hex}")


def test_http_protocol_details(store_server: StoreService, db: str) -> None:
    with urllib.request.urlopen(f"{store_server.url}/ping", timeout=10) as response:
        assert response.read() == b"Ok.\n"
    # GET with the query in the URL, TabSeparated by default.
    req = urllib.request.Request(f"{store_server.url}/?query={quote('SELECT 1, 2')}", headers=key())
    with urllib.request.urlopen(req, timeout=10) as response:
        assert response.read() == b"1\t2\n" and response.headers["X-ClickHouse-Format"] == "TabSeparated"
    # POST: query param + gzip-compressed data body.
    database = parse_qs(urlsplit(db).query)["database"][0]
    connect(db).command("CREATE TABLE csv (a UInt32, b String) ENGINE = Memory")
    insert = quote("INSERT INTO csv FORMAT CSV")
    req = urllib.request.Request(f"{store_server.url}/?database={database}&query={insert}",
                                 data=gzip.compress(b"1,x\n2,y\n"),
                                 headers={"Content-Encoding": "gzip", **key()})
    with urllib.request.urlopen(req, timeout=10) as response:
        assert '"written_rows": "2"' in response.headers["X-ClickHouse-Summary"]
    assert connect(db).query("SELECT a, b FROM csv ORDER BY a").result_rows == [(1, "x"), (2, "y")]
    # Responses are compressed with what the client accepts.
    req = urllib.request.Request(f"{store_server.url}/?query={quote('SELECT number FROM numbers(1000)')}",
                                 headers={"Accept-Encoding": "zstd", **key()})
    with urllib.request.urlopen(req, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "zstd"
        body = zstandard.ZstdDecompressor().decompressobj().decompress(response.read())
        assert body.splitlines()[-1] == b"999"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(f"{store_server.url}/nowhere", headers=key()),
                               timeout=10)
    assert info.value.code == 404


def test_serve_on_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "maskwatch.cli", "store", "serve", "--port", str(port),
             "--data-dir", str(tmp_path / "chdb")], capture_output=True, text=True, timeout=60,
        )
    assert out.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_password_when_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    (tmp_path / "pw").write_text(password + "\n")
    monkeypatch.setenv("MASKWATCH_STORE_PASSWORD_FILE", str(tmp_path / "pw"))
    service = StoreService(home=tmp_path, port=free_port(), attached=True)
    service.start()  # readiness is /ping, which needs no password (as in ClickHouse)
    try:
        with pytest.raises(DatabaseError, match="AUTHENTICATION_FAILED"):
            connect(f"{service.url}/", password="")
        with pytest.raises(DatabaseError, match="AUTHENTICATION_FAILED"):
            connect(f"{service.url}/", password="wrong")
        assert connect(f"{service.url}/", password=password).command("SELECT 41 + 1") == 42
        req = urllib.request.Request(f"{service.url}/?query={quote('SELECT 7')}",
                                     headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": password})
        with urllib.request.urlopen(req, timeout=10) as response:
            assert response.read() == b"7\n"
    finally:
        service.stop()
    assert password not in service.process.log_file.read_text()


def test_concurrent_clients_do_not_interfere(store_server: StoreService) -> None:
    names = [f"c_{uuid.uuid4().hex}" for _ in range(6)]
    errors: list[BaseException] = []
    results: dict[str, tuple[int, float, set[str]]] = {}

    def work(name: str, index: int) -> None:
        try:
            admin = connect(store_server.url)
            admin.command(f"CREATE DATABASE {name}")
            client = connect(f"{store_server.url}/?database={name}", compress="lz4")
            client.command(TYPES_DDL)
            for batch in range(5):
                client.insert("frames", _rows(40 + index, f"cam-{index}-{batch}"),
                              column_names=COLUMNS)
                client.query("SELECT count() FROM frames", settings={"max_threads": 1 + index % 2})
            n, total = client.query("SELECT count(), sum(score) FROM frames").result_rows[0]
            cams = {row[0] for row in client.query("SELECT DISTINCT camera_id FROM frames").result_rows}
            results[name] = (n, total, cams)
            admin.command(f"DROP DATABASE {name}")
        except BaseException as ex:
            errors.append(ex)

    threads = [threading.Thread(target=work, args=(name, i)) for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    for index, name in enumerate(names):
        n, total, cams = results[name]
        per_batch = 40 + index
        assert n == 5 * per_batch
        assert total == pytest.approx(5 * sum(i / 4 for i in range(per_batch)))
        assert cams == {f"cam-{index}-{b}" for b in range(5)}


def test_data_persists_and_directory_is_exclusive(tmp_path: Path) -> None:
    data_dir = tmp_path / "chdb"
    service = StoreService(home=tmp_path, port=free_port(), data_dir=data_dir)
    service.start()
    try:
        client = connect(f"{service.url}/")
        client.command("CREATE DATABASE keep")
        client = connect(f"{service.url}/?database=keep")
        client.command(TYPES_DDL)
        client.insert("frames", _rows(25), column_names=COLUMNS)
        # A second server on the same directory refuses, naming the directory and the owner.
        second = subprocess.run(
            [sys.executable, "-m", "maskwatch.cli", "store", "serve", "--port", str(free_port()),
             "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60,
        )
        assert second.returncode != 0
        assert "already served by another running process" in second.stderr
        assert str(data_dir) in second.stderr and str(service.pid()) in second.stderr
        # Through the service manager, the clash shows up as a start-up failure with the same reason.
        clash = StoreService(home=tmp_path / "other", port=free_port(), data_dir=data_dir)
        with pytest.raises(ServiceError, match="already served"):
            clash.start()
    finally:
        assert service.stop()
    assert service.pid() is None
    assert "store server stopped" in service.process.log_file.read_text()  # SIGTERM handled, not killed
    # After a clean SIGTERM the engine's files are readable in-process through chdb:// (own process:
    # chdb allows one data path per process).
    check = (
        "import clickhouse_connect, sys\n"
        f"c = clickhouse_connect.get_client(dsn='chdb://{data_dir}')\n"
        "print(c.query('SELECT count(), countIf(faces IS NULL), max(length(labels)) FROM keep.frames')"
        ".result_rows[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(25, 9, 3)"
