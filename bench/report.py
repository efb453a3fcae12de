"""The benchmark's printed table (the JSON holds everything; this is the summary a person reads)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, "-" * len(line), *body])


def best_together(rows: Sequence[dict[str, Any]], size: str) -> dict[str, Any] | None:
    both = [r for r in rows if r["stage"] == "together" and r["size"] == size]
    return max(both, key=lambda r: r["frames_per_s"]) if both else None


def baseline_ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours (best batch, detector+classifier) over the baseline, per size, frames/s."""
    out = []
    for base in result.get("baseline", []):
        ours = best_together(result.get("inference", []), base["size"])
        if ours and base["frames_per_s"]:
            out.append(
                {
                    "size": base["size"],
                    "ours_fps": ours["frames_per_s"],
                    "ours_batch": ours["batch"],
                    "baseline_fps": base["frames_per_s"],
                    "ratio": round(ours["frames_per_s"] / base["frames_per_s"], 2),
                    # Our detector finds more faces; per face classified the comparison is like for like.
                    "ours_faces_per_s": ours["faces_per_s"],
                    "baseline_faces_per_s": base["faces_per_s"],
                    "faces_ratio": round(ours["faces_per_s"] / base["faces_per_s"], 2)
                    if base["faces_per_s"]
                    else None,
                }
            )
    return out


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(
        f"\nmaskwatch bench  {result['started']}  {m['nproc']} cores  {m['cpu']}  device={result['device']}"
    )
    if result.get("inference"):
        print("\nInference only (our engine; *_model = ONNX session on a ready tensor)")
        print(
            table(
                ["size", "batch", "stage", "provider", "frames/s", "faces/s", "ms/call", "faces/frame"],
                [
                    [
                        r["size"],
                        r["batch"],
                        r["stage"],
                        r["provider"],
                        r["frames_per_s"],
                        r["faces_per_s"],
                        r["ms_per_call"],
                        r["faces_per_frame"],
                    ]
                    for r in result["inference"]
                ],
            )
        )
    if result.get("baseline"):
        print("\nBaseline (chandrikadeb7 pipeline, one frame and one face at a time)")
        print(
            table(
                ["size", "frames/s", "faces/s", "ms/frame", "faces/frame"],
                [
                    [r["size"], r["frames_per_s"], r["faces_per_s"], r["ms_per_call"], r["faces_per_frame"]]
                    for r in result["baseline"]
                ],
            )
        )
        ratios = result.get("ratios") or baseline_ratios(result)
        if ratios:
            print("\nOurs / baseline (same frames; ours at its best batch)")
            print(
                table(
                    [
                        "size",
                        "at batch",
                        "ours fps",
                        "baseline fps",
                        "ratio",
                        "ours faces/s",
                        "baseline faces/s",
                        "faces ratio",
                    ],
                    [
                        [
                            r["size"],
                            r["ours_batch"],
                            r["ours_fps"],
                            r["baseline_fps"],
                            f"{r['ratio']}x",
                            r.get("ours_faces_per_s"),
                            r.get("baseline_faces_per_s"),
                            f"{r.get('faces_ratio')}x",
                        ]
                        for r in ratios
                    ],
                )
            )
    flow = result.get("flow")
    if flow:
        print("\nWhole flow (real broker + store, file:// cameras, backlog then live)")
        rows = []
        for r in flow["runs"]:
            live = r.get("live", {})
            rss = r.get("peak_rss_mb", {})
            rows.append(
                [
                    f"{r['processes']}x{r['workers']}",
                    r["cameras"],
                    r["frame_size"],
                    r["ticks"],
                    r["ok"],
                    r["ticks_per_s"],
                    r["rows_per_s"],
                    r.get("outside_inference_ms_per_tick"),
                    r["wall_s_incl_startup"],
                    live.get("ticks_per_s"),
                    live.get("tick_to_frame_ms_p50"),
                    live.get("tick_to_frame_ms_p99"),
                    live.get("alerts"),
                    live.get("tick_to_alert_ms_p50"),
                    live.get("tick_to_alert_ms_p99"),
                    max(rss.values()) if rss else None,
                ]
            )
        print(
            table(
                [
                    "procs x workers",
                    "cams",
                    "size",
                    "ticks",
                    "ok",
                    "ticks/s",
                    "rows/s",
                    "ms/tick outside inference",
                    "wall s",
                    "live/s",
                    "frame p50 ms",
                    "p99",
                    "alerts",
                    "alert p50 ms",
                    "p99",
                    "flow RSS MiB",
                ],
                rows,
            )
        )
        print(f"services peak RSS MiB: {flow['services_peak_rss_mb']}")
        for r in flow["runs"]:
            for err in r.get("errors", []):
                print(f"WARNING {r['processes']}x{r['workers']}: frames not ok: {err[:300]}")
        for r in flow["runs"]:
            prof = r.get("profile")
            if prof and prof.get("samples"):
                print(
                    f"\nflow profile ({r['processes']}x{r['workers']}, {prof['samples']} samples), "
                    "share by stage:"
                )
                print("  " + ", ".join(f"{k} {v:.0%}" for k, v in prof["stage_share"].items()))
    if result.get("bench_process_peak_rss_mb"):
        print(f"\nbench process (inference) peak RSS: {result['bench_process_peak_rss_mb']} MiB")
    print(f"total {result['seconds']} s")
