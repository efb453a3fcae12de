"""``maskwatch snapshots serve``: serves snapshot files to whoever holds a valid signed link, nothing
else. GET/HEAD ``/s/<camera>/<day>/<file>.jpg?exp=..&sig=..`` only; every other request is refused
without touching the file system. HTTPS when given a certificate, else plain HTTP meant for loopback
behind a TLS proxy."""

from __future__ import annotations

import http.server
import logging
import ssl
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from maskwatch.snapshots.links import check

log = logging.getLogger(__name__)
MAX_BYTES = 20 * 1024**2  # no snapshot is bigger; anything over it is not one
TIMEOUT_S = 10.0  # a client that stops reading or sending is cut off


class SnapshotServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path, key: bytes,
                 tls: tuple[Path, Path] | None = None):
        super().__init__(address, _Handler)
        self.root, self.key = root.resolve(), key
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.socket = context.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("snapshot server: a connection from %s failed", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SnapshotServer
    server_version = "maskwatch-snapshots"
    sys_version = ""
    timeout = TIMEOUT_S

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _refuse(self, status: int, why: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        log.info("snapshot link refused (%d): %s", status, why)

    def _serve(self, body: bool) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, max_num_fields=4)
        if not parts.path.startswith("/s/"):
            return self._refuse(404, "not a snapshot link")
        relative = unquote(parts.path[3:])
        why = check(relative, (query.get("exp") or [""])[0], (query.get("sig") or [""])[0], self.server.key)
        if why:
            return self._refuse(403, why)
        path = (self.server.root / relative).resolve()
        if not path.is_relative_to(self.server.root) or not path.is_file():
            return self._refuse(404, "no such snapshot (deleted by age or disk budget?)")
        size = path.stat().st_size
        if size > MAX_BYTES:
            return self._refuse(404, "not a snapshot")
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "private, max-age=3600")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if body:
            self.wfile.write(path.read_bytes())

    def do_POST(self) -> None:
        self._refuse(405, "method not allowed")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def log_message(self, format: str, *args: object) -> None:
        log.debug("snapshot server: " + format, *args)
