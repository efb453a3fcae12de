"""Signed snapshot links: the real server on loopback (HTTP, and HTTPS with a throwaway CA) serves a
snapshot only for a valid, unexpired link, and nothing else."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trustme

from maskwatch.snapshots.links import check, make_link
from maskwatch.snapshots.server import SnapshotServer

pytestmark = pytest.mark.without_models

KEY = b"test-link-key"


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "snapshots" / "door" / "20261204" / "door_1733300000000.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xd8 a jpeg \xff\xd9")
    (tmp_path / "secret.txt").write_text("not a snapshot")
    return path


def _serve(root: Path, tls: tuple[Path, Path] | None = None) -> Iterator[SnapshotServer]:
    server = SnapshotServer(("127.0.0.1", 0), root, KEY, tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_links_sign_expire_and_refuse_tampering(snapshot: Path) -> None:
    root = snapshot.parents[2]
    now = datetime(2026, 12, 4, tzinfo=UTC)
    url, until = make_link("https://snap.example/", root, str(snapshot), KEY, 600, now) or ("", now)
    assert url.startswith("https://snap.example/s/door/20261204/door_1733300000000.jpg?exp=")
    assert until == now + timedelta(minutes=10)
    relative = "door/20261204/door_1733300000000.jpg"
    exp, sig = url.split("exp=")[1].split("&sig=")
    assert check(relative, exp, sig, KEY, now) == ""
    assert check(relative, exp, sig, KEY, now + timedelta(minutes=11)) == "expired"
    assert check(relative, str(int(exp) + 3600), sig, KEY, now) == "bad signature"  # a longer life
    assert check("door/20261204/other.jpg", exp, sig, KEY, now) == "bad signature"
    assert check(relative, exp, sig, b"another key", now) == "bad signature"
    assert check("../secret.txt", exp, sig, KEY, now) == "not a snapshot path"
    assert make_link("https://x", root, str(root.parent / "secret.txt"), KEY, 600) is None


@pytest.mark.parametrize("https", [False, True])
def test_the_server_serves_valid_links_only(snapshot: Path, tmp_path: Path, https: bool) -> None:
    root = snapshot.parents[2]
    tls = None
    verify: bool | ssl.SSLContext = True
    if https:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        tls = (tmp_path / "server.pem", tmp_path / "server.pem")
        verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    for server in _serve(root, tls):
        base = f"{'https' if https else 'http'}://127.0.0.1:{server.server_address[1]}"
        made = make_link(base, root, str(snapshot), KEY, 600)
        assert made is not None
        with httpx.Client(verify=verify) as client:
            ok = client.get(made[0])
            assert ok.status_code == 200 and ok.content == snapshot.read_bytes()
            assert ok.headers["content-type"] == "image/jpeg"
            assert ok.headers["x-content-type-options"] == "nosniff"
            assert client.head(made[0]).status_code == 200
            tampered = made[0].replace("door_1733300000000", "door_1733300000001")
            assert client.get(tampered).status_code == 403
            unsigned = made[0].split("?")[0]
            assert client.get(unsigned).status_code == 403
            assert client.get(f"{base}/s/../../secret.txt?exp=9999999999&sig=x").status_code in (403, 404)
            assert client.get(f"{base}/secret.txt").status_code == 404
            assert client.post(made[0], content=b"x").status_code == 405
            expired = make_link(base, root, str(snapshot), KEY, 600, datetime.now(UTC) - timedelta(hours=1))
            assert expired is not None and client.get(expired[0]).status_code == 403
            snapshot.unlink()  # pruned by age or by the disk budget meanwhile
            assert client.get(made[0]).status_code == 404
