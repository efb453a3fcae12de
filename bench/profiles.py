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

# Stages of a tick's path, matched against py-spy frame names ("function (file:line)") from the leaf up;
# the first match names the stage a sample is charged to.
STAGES = [
    ("model", re.compile(r"onnxruntime|inference/session\.py")),
    ("preprocess+crops", re.compile(r"inference/preprocess\.py")),
    ("postprocess+nms", re.compile(r"inference/postprocess\.py")),
    ("snapshot", re.compile(r"flows/snapshots\.py")),
    ("decode", re.compile(r"imdecode|decode_image")),
    ("fetch", re.compile(r"cameras/capture/")),
    ("store", re.compile(r"clickhouse_connect|maskwatch/store\.py|flows/sinks\.py")),
    ("kafka (incl. waiting for ticks)", re.compile(r"confluent_kafka|connectors/kafka")),
    ("rules", re.compile(r"flows/rules\.py")),
    ("schemas", re.compile(r"pydantic|schemas/")),
    ("bytewax runtime", re.compile(r"flows/cli\.py|bytewax")),
]
_IDLE_LEAF = re.compile(r"^(Condition\.wait|Event\.wait|_worker \(concurrent)")


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
                if name == "model":  # split by the engine call the session run serves
                    classify = any("InferenceEngine.classify" in f for f in frames)
                    return "classifier_model" if classify else "detector_model"
                return name
    return "other"


def summarise_pyspy(raw: Path, top: int = 15) -> dict[str, Any]:
    """Where the flow's threads spend their time, from ``py-spy record --idle --format raw`` stacks.

    ``dataflow_share``: the Bytewax worker thread(s) (batching, inference, rules, sinks), waiting
    included, as shares of their samples. ``fetch_pool_busy``: samples of fetch threads doing work
    (read + JPEG decode), relative to the same total. Idle pool threads are left out.
    """
    dataflow: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    fetch_busy = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")[1:]  # the first entry names the thread
        if not frames or _IDLE_LEAF.search(frames[-1]):
            continue
        if any("concurrent/futures/thread.py" in f for f in frames):
            fetch_busy += n if any("cameras/capture/" in f for f in frames) else 0
            continue
        if not any(("flows/" in f or "bytewax" in f) for f in frames):
            continue
        dataflow[_stage(frames)] += n
        leaves[frames[-1]] += n
    total = sum(dataflow.values())
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "stage_share": {k: round(v / total, 3) for k, v in dataflow.most_common()},
        "fetch_pool_busy": round(fetch_busy / total, 3),
        "top_leaf_functions": [(k, round(v / total, 3)) for k, v in leaves.most_common(top)],
    }
