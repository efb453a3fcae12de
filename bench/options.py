"""What the bench commands (`python -m bench`, `python -m bench.frontier`) share on their command lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Frame sizes from `WxH[,WxH...]`, each at least 16x16."""
    try:
        sizes = [(int(w), int(h)) for w, h in (s.lower().split("x") for s in text.split(",") if s)]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected WxH[,WxH...], e.g. 640x480,1024x1024") from None
    if not sizes or any(w < 16 or h < 16 for w, h in sizes):
        raise click.BadParameter(f"{text!r}: sizes must be at least 16x16")
    return sizes


def out_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--out DIR` (into the `out_dir` parameter), bench/results/ by default."""
    return click.option(
        "--out",
        "out_dir",
        default=RESULTS_DIR,
        type=click.Path(file_okay=False, path_type=Path),
        show_default=True,
        help=help_text,
    )
