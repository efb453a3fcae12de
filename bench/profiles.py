"""Where the time goes: cProfile of the engine in-process; a summary of py-spy's raw stacks of the flow."""

from __future__ import annotations

import cProfile
import io
import pstats
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Stages of a tick's path, matched against py-spy frame names (function (file:line)); the first match
# from the leaf up names the stage a sample is charged to.
STAGES = [
    ("decode", re.compile(r"imdecode|decode_image|imread")),
    ("fetch", re.compile(r"flows/fetch\.py")),
    ("snapshot", re.compile(r"snapshots\.py")),
    ("model", re.compile(r"onnxruntime|inference/session\.py")),
    ("preprocess", re.compile(r"inference/preprocess\.py")),
    ("postprocess", re.compile(r"inference/postprocess\.py")),
    ("store", re.compile(r"clickhouse_connect|maskwatch/store\.py|flows/sinks\.py")),
    ("kafka", re.compile(r"confluent_kafka|bytewax/connectors/kafka")),
    ("rules", re.compile(r"flows/rules\.py")),
    ("schemas", re.compile(r"pydantic|schemas/")),
]


def cprofile(call: Callable[[], object], repeat: int, top: int = 15) -> str:
    """cProfile text of ``call`` run ``repeat`` times, the ``top`` functions by own time."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeat):
        call()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in STAGES:
            if pattern.search(frame):
                # Model runs are split by which engine call they serve.
                if name == "model":
                    return (
                        "classifier_model"
                        if any(f.startswith("classify ") for f in frames)
                        else "detector_model"
                    )
                return name
    return "other"


def summarise_pyspy(raw: Path, top: int = 20) -> dict[str, Any]:
    """Stage shares and the hottest leaf functions from ``py-spy record --format raw`` output."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        stages[_stage(frames)] += n
        leaves[frames[-1]] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "stage_share": {k: round(v / total, 3) for k, v in stages.most_common()},
        "top_leaf_functions": [(k, round(v / total, 3)) for k, v in leaves.most_common(top)],
    }
