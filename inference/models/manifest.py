"""The pulled models' specs: ``<models_dir>/manifest.json``, a JSON list of ``ModelSpec`` dumps."""

from __future__ import annotations

import json
import os
from pathlib import Path

from maskwatch.config import Settings
from maskwatch.inference.spec import ModelSpec

MANIFEST = "manifest.json"
DEFAULT_DETECTOR = "rfb640"
DEFAULT_CLASSIFIER = "mobilenetv2-mask"
# Names of the models built beside the pulled ones: <base>-ft re-trained on a dataset's train split
# (maskwatch models finetune / finetune-detector), <base>-cal with its box adjustment fitted (calibrate).
FINETUNED_SUFFIX = "-ft"
CALIBRATED_SUFFIX = "-cal"


class ModelNotPulledError(LookupError):
    """A model the caller asked for is not in the local cache."""


def _dir(models_dir: Path | None) -> Path:
    return Path(models_dir) if models_dir is not None else Settings().models_dir


def load_manifest(models_dir: Path | None = None) -> dict[str, ModelSpec]:
    """Specs by name, with ``file`` made absolute. Empty when nothing has been pulled yet."""
    base = _dir(models_dir)
    path = base / MANIFEST
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rerun `maskwatch models pull`") from exc
    specs: dict[str, ModelSpec] = {}
    for entry in entries:
        spec = ModelSpec.model_validate(entry)
        specs[spec.name] = spec.model_copy(update={"file": str(spec.path(base))})
    return specs


def get_spec(name: str, models_dir: Path | None = None) -> ModelSpec:
    """The spec of a pulled model; a clear error naming the fix when it is missing."""
    base = _dir(models_dir)
    specs = load_manifest(base)
    spec = specs.get(name)
    if spec is None:
        have = ", ".join(sorted(specs)) or "none"
        raise ModelNotPulledError(
            f"model {name!r} is not in {base} (pulled: {have}); run `maskwatch models pull` "
            "(MASKWATCH_MODELS_DIR selects the cache directory)"
        )
    if not Path(spec.file).exists():
        raise ModelNotPulledError(
            f"model {name!r}: file {spec.file} is missing; run `maskwatch models pull` to restore it"
        )
    return spec


def write_manifest(models_dir: Path, specs: list[ModelSpec]) -> None:
    """Atomically replace the manifest (readers never see a half-written file)."""
    path = models_dir / MANIFEST
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps([s.model_dump(mode="json") for s in specs], indent=2) + "\n")
    os.replace(tmp, path)
