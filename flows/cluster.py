"""Where this process sits in a Bytewax cluster, read the way Bytewax itself reads it.

``maskwatch flow run`` and ``python -m bytewax.run`` both honour Bytewax's own variables, so Bytewax's Helm
chart and ``waxctl`` drive the flow unchanged: ``BYTEWAX_WORKERS_PER_PROCESS``, ``BYTEWAX_PROCESS_ID`` (or
the ordinal of ``BYTEWAX_POD_NAME`` in ``BYTEWAX_STATEFULSET_NAME``) and ``BYTEWAX_ADDRESSES`` (or the file
``BYTEWAX_HOSTFILE_PATH``, one ``host:port`` a line).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ClusterError(ValueError):
    """Bytewax cluster variables that do not describe a cluster; the message names them."""


@dataclass(frozen=True)
class Cluster:
    """This process's place: its worker threads, its index, and the address of every process.

    >>> c = Cluster(workers_per_process=2, process_id=1, addresses=("a:2101", "a:2102", "b:2101"))
    >>> c.total_workers, c.workers_on_this_host
    (6, 4)
    """

    workers_per_process: int = 1
    process_id: int | None = None
    addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.workers_per_process < 1:
            raise ClusterError(f"workers per process must be >= 1, got {self.workers_per_process}")
        if (self.process_id is None) != (not self.addresses):
            raise ClusterError(
                "a process id and the addresses go together (-i with -a, or "
                "BYTEWAX_PROCESS_ID with BYTEWAX_ADDRESSES)"
            )
        if self.process_id is not None and not 0 <= self.process_id < len(self.addresses):
            raise ClusterError(f"process id {self.process_id}: only {len(self.addresses)} addresses")

    @property
    def total_workers(self) -> int:
        """Worker threads of the whole cluster: the micro-batch shards, one per worker."""
        return self.workers_per_process * max(1, len(self.addresses))

    @property
    def workers_on_this_host(self) -> int:
        """Worker threads of every process of this cluster on this host: engines sharing its cores."""
        if self.process_id is None:
            return self.workers_per_process
        host = self.addresses[self.process_id].rsplit(":", 1)[0]
        return self.workers_per_process * sum(1 for a in self.addresses if a.rsplit(":", 1)[0] == host)


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ClusterError(f"{name}={raw!r}: expected a whole number") from None


def process_id_from(env: Mapping[str, str]) -> int | None:
    """``BYTEWAX_PROCESS_ID``, else the ordinal of a StatefulSet pod (what Bytewax's Helm chart sets)."""
    pid = _int(env, "BYTEWAX_PROCESS_ID")
    if pid is None and env.get("BYTEWAX_POD_NAME") and env.get("BYTEWAX_STATEFULSET_NAME"):
        ordinal = env["BYTEWAX_POD_NAME"].removeprefix(env["BYTEWAX_STATEFULSET_NAME"] + "-")
        pid = _int({"BYTEWAX_POD_NAME": ordinal}, "BYTEWAX_POD_NAME")
    return pid


def addresses_from(env: Mapping[str, str]) -> tuple[str, ...]:
    """``BYTEWAX_ADDRESSES`` (``;``-separated), else the lines of ``BYTEWAX_HOSTFILE_PATH``."""
    raw = env.get("BYTEWAX_ADDRESSES", "").strip()
    if not raw and env.get("BYTEWAX_HOSTFILE_PATH"):
        path = Path(env["BYTEWAX_HOSTFILE_PATH"])
        try:
            raw = ";".join(line.strip() for line in path.read_text().splitlines() if line.strip())
        except OSError as exc:
            raise ClusterError(f"BYTEWAX_HOSTFILE_PATH={str(path)!r}: cannot read it ({exc})") from None
    return tuple(a.strip() for a in raw.split(";") if a.strip())


def from_environ(env: Mapping[str, str] | None = None) -> Cluster:
    env = os.environ if env is None else env
    addresses = addresses_from(env)
    pid = process_id_from(env) if addresses else None
    return Cluster(_int(env, "BYTEWAX_WORKERS_PER_PROCESS") or 1, pid, addresses)


def running() -> Cluster:
    """The cluster this process runs in. Under ``python -m bytewax.run`` that is its own command line
    (its ``-w/-i/-a`` with their environment fallbacks), parsed by its own parser; else the environment."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    parse = getattr(main, "_parse_args", None)
    if spec is not None and spec.name == "bytewax.run" and callable(parse):
        args = parse()  # bytewax 0.21.1's run.py: the same argv it is about to run with
        addresses = tuple(a for a in (args.addresses or "").split(";") if a)
        return Cluster(args.workers_per_process or 1, args.process_id if addresses else None, addresses)
    return from_environ()
