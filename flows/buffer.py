"""A bounded on-disk buffer for store writes that failed, so a store outage loses nothing.

Records are JSON lines in append-only segment files (``seg-<n>.jsonl``) under one directory per
worker. Draining replays whole segments in order and deletes a segment only after every record in it
was written; a record written twice is harmless because every store table is keyed by deterministic
ids. A line cut short by a crash is ignored: the epoch that wrote it never completed, so Bytewax
replays its items anyway.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Row = dict[str, Any]


class BufferFullError(RuntimeError):
    """The buffer reached its size bound; the caller must wait for the store instead of dropping."""


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__dt__": value.isoformat()}
    raise TypeError(f"cannot buffer a value of type {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "__dt__" in obj:
        return datetime.fromisoformat(obj["__dt__"])
    return obj


class DiskBuffer:
    def __init__(self, directory: Path, max_bytes: int = 512 * 1024**2, segment_bytes: int = 8 * 1024**2):
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("seg-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._segments())

    def __len__(self) -> int:
        return sum(1 for _ in self._records())

    def row_count(self) -> int:
        """Rows waiting (reads every segment: call it on start-up or after a failure, not per write)."""
        return sum(len(rows) for _, rows in self._records())

    def _records(self) -> Iterator[tuple[str, list[Row]]]:
        for seg in self._segments():
            for _, table, rows in self._read(seg):
                yield table, rows

    def append(self, table: str, rows: list[Row]) -> None:
        """Durably append one batch of rows for ``table`` (fsync'd before returning)."""
        line = json.dumps({"table": table, "rows": rows}, default=_encode, separators=(",", ":")) + "\n"
        data = line.encode()
        if self.size_bytes() + len(data) > self.max_bytes:
            raise BufferFullError(
                f"store buffer {self.directory} is full ({self.max_bytes} bytes); waiting for the store"
            )
        segments = self._segments()
        if segments and segments[-1].stat().st_size < self.segment_bytes:
            target = segments[-1]
        else:
            last = int(segments[-1].stem.split("-")[1]) if segments else 0
            target = self.directory / f"seg-{last + 1:08d}.jsonl"
        with open(target, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _read(seg: Path) -> Iterator[tuple[int, str, list[Row]]]:
        with open(seg, "rb") as f:
            for n, raw in enumerate(f):
                if not raw.endswith(b"\n"):
                    log.warning("ignoring a truncated record at the end of %s", seg)
                    return
                rec = json.loads(raw, object_hook=_decode)
                yield n, rec["table"], rec["rows"]

    def drain(self, write: Callable[[str, list[Row]], None]) -> int:
        """Write every buffered batch with ``write`` in order; returns batches written.

        Stops at the first failure (the exception propagates) and keeps that segment, so a later
        drain resumes there.
        """
        done = 0
        for seg in self._segments():
            for _, table, rows in self._read(seg):
                write(table, rows)
                done += 1
            seg.unlink()
        return done
