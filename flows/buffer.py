"""A bounded on-disk buffer for store writes that failed, so a store outage loses nothing.

Records are JSON lines in append-only segment files (``seg-<n>.jsonl``) under one directory per
worker. Draining replays whole segments in order and deletes a segment only after every record in it
was written; a record written twice is harmless because every store table is keyed by deterministic
ids. A line cut short by a crash (``kill -9`` during an outage) is cut off when the buffer is opened: the
epoch that wrote it never completed, so Bytewax replays its items anyway, and nothing appended later can
merge with it. A line that is not a record (disk damage, a hand edit) is moved to ``corrupt.jsonl`` beside
the segments with a logged error instead of stopping every later drain. A worker also takes over the
buffers of workers that no longer exist (a cluster scaled down from 4 workers to 2), so none is left
unread.
"""

from __future__ import annotations

import contextlib
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
        for seg in self._segments():
            self._cut_partial_tail(seg)

    @staticmethod
    def _cut_partial_tail(seg: Path) -> None:
        """Drop bytes after the last complete line (a record cut short by a crash)."""
        size = seg.stat().st_size
        if size == 0:
            return
        with open(seg, "rb+") as f:
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            keep = 0
            chunk = 1 << 16
            pos = size
            while pos > 0:  # find the last newline, reading backwards
                start = max(0, pos - chunk)
                f.seek(start)
                block = f.read(pos - start)
                at = block.rfind(b"\n")
                if at >= 0:
                    keep = start + at + 1
                    break
                pos = start
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        log.warning("store buffer %s: cut off a record left incomplete by a crash (%d bytes)", seg,
                    size - keep)

    def adopt(self, other: Path) -> int:
        """Move the segments of another worker's buffer directory behind this one's; returns how many."""
        moved = 0
        if not other.is_dir() or other.resolve() == self.directory.resolve():
            return moved
        for seg in DiskBuffer(other, self.max_bytes, self.segment_bytes)._segments():
            segments = self._segments()
            last = int(segments[-1].stem.split("-")[1]) if segments else 0
            os.replace(seg, self.directory / f"seg-{last + 1:08d}.jsonl")
            moved += 1
        corrupt = other / "corrupt.jsonl"
        if corrupt.exists():
            os.replace(corrupt, self.directory / f"corrupt-from-{other.name}.jsonl")
        with contextlib.suppress(OSError):  # something else lives there: leave it
            other.rmdir()
        return moved

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

    def _read(self, seg: Path) -> Iterator[tuple[int, str, list[Row]]]:
        bad: list[bytes] = []
        with open(seg, "rb") as f:
            for n, raw in enumerate(f):
                if not raw.endswith(b"\n"):
                    log.warning("ignoring a truncated record at the end of %s", seg)
                    break
                try:
                    rec = json.loads(raw, object_hook=_decode)
                    table, rows = rec["table"], rec["rows"]
                    if not isinstance(table, str) or not isinstance(rows, list):
                        raise TypeError("not a {table, rows} record")
                except (ValueError, TypeError, KeyError) as exc:
                    bad.append(raw)
                    log.error("store buffer %s: line %d is not a record (%s); moved to corrupt.jsonl",
                              seg, n + 1, exc)
                    continue
                yield n, table, rows
        if bad:
            self._quarantine(seg, bad)

    def _quarantine(self, seg: Path, lines: list[bytes]) -> None:
        """Keep lines that are not records out of the way (for a person to look at) and out of the
        segment, so the next drain does not meet them again."""
        with open(self.directory / "corrupt.jsonl", "ab") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
        if seg.exists():
            keep = [raw for raw in seg.read_bytes().splitlines(keepends=True) if raw not in lines]
            tmp = seg.with_suffix(".tmp")
            tmp.write_bytes(b"".join(keep))
            os.replace(tmp, seg)

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
