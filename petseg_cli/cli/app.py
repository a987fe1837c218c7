"""The ``petseg`` command: parses options, calls one library function per subcommand, prints.

Heavy modules (torch, albumentations, matplotlib) are imported inside the commands, so ``petseg --help``
stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .. import __version__
from ..commands.compare import ALL_COLUMNS, COLUMN_KEYS, DEFAULT_SORT, OutputFormat
from .common import CONFIG, DEVICE, PRECISION, RUNTIME, TTA, WEIGHTS, PetsegGroup, print_lines, run_command
from .machine import machine
from .serve import serve
from .train import train
from ..base.console import info, out, print_table, warn
from ..commands.evaluate import DEFAULT_VISUALIZE, EvaluateOptions
from ..export.command import FORMATS, MIN_OPSET, ExportOptions
from ..commands.infer import DEFAULT_OUTPUT_DIR, InferOptions
from ..config.settings import DEFAULTS, load_settings
from ..commands.summary import DEFAULT_DEPTH

app = typer.Typer(
    cls=PetsegGroup,
    help="Train, evaluate and serve pet-vs-background segmentation models on the Oxford-IIIT Pet dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: drawing it with Rich would double the start-up time
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"petseg {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """petseg: binary (pet vs. background) segmentation on Oxford-IIIT Pet."""


@app.command()
def download(
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help=f"Where the dataset goes; archives go beside it (default: {DEFAULTS.data.data_dir})."
    ),
    mirror: Optional[str] = typer.Option(
        None, "--mirror", metavar="URL",
        help="Base URL holding images.tar.gz and annotations.tar.gz, instead of the official site "
        "(default: $PETSEG_MIRROR, else download.mirror in petseg.toml).",
    ),
    md5: Optional[List[str]] = typer.Option(
        None, "--md5", metavar="NAME=HASH",
        help="Expected MD5 of an archive, images=HASH or annotations=HASH, for a mirror that repackages; "
        "repeatable (default: download.images_md5 / annotations_md5 in petseg.toml, else the release's).",
    ),
    keep_archives: bool = typer.Option(False, "--keep-archives", help="Keep the verified archives after extraction."),
    force: bool = typer.Option(
        False, "--force", help="Download and extract again, replacing the data directory once the new data is complete."
    ),
    config: Optional[Path] = CONFIG,
) -> None:
    """Download, verify and extract the Oxford-IIIT Pet release.

    A second run does nothing once the data is complete and verified."""

    def go():
        from ..data.download import download_dataset, md5_overrides

        overrides = {
            "data": {"data_dir": str(data_dir) if data_dir else None},
            "download": {"mirror": mirror, **md5_overrides(md5 or [])},
        }
        return download_dataset(load_settings(config, overrides), keep_archives=keep_archives, force=force)

    print_lines(run_command(go).report())


app.command()(train)  # its options: cli_train.py

EVALUATE_DEFAULTS, INFER_DEFAULTS, EXPORT_DEFAULTS = EvaluateOptions(), InferOptions(), ExportOptions()


@app.command()
def evaluate(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN", help="Run directories to score (one table row each)."),
    split: str = typer.Option(EVALUATE_DEFAULTS.split, "--split", help="Split to score: test, val or train."),
    weights: str = typer.Option(EVALUATE_DEFAULTS.weights, "--weights", help="best (best.pth) or last (last.pth)."),
    at: str = typer.Option(
        EVALUATE_DEFAULTS.at, "--at",
        help="Score at each image's own size (original: exactly the masks petseg infer writes, against full-size "
        "trimaps) or at the run's training size (training: fast, the figure validation reports).",
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset directory (default: the one each run was trained on)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per batch (default: the run's own)."),
    device: Optional[str] = DEVICE,
    precision: Optional[str] = PRECISION,
    tta: bool = TTA,
    visualize: int = typer.Option(
        EVALUATE_DEFAULTS.visualize, "--visualize", metavar="[N]", show_default=False,
        help=f"Save samples-<tag>.png, a grid of N images ({DEFAULT_VISUALIZE} when no number follows; without --visualize, none).",
    ),
    worst: bool = typer.Option(False, "--worst", help="With --visualize: the N lowest-Dice images, not the first N."),
    by: Optional[List[str]] = typer.Option(
        None, "--by", metavar="breed|species", help="Also score each breed or species: a table and eval-<tag>-by-<group>.csv (repeatable)."
    ),
    thresholds: Optional[str] = typer.Option(
        None, "--thresholds", metavar="START:STOP:STEP",
        help="Dice at each mask threshold (e.g. 0.3:0.7:0.05 or 0.4,0.5,0.6) and the expected calibration error (ECE: "
        "the gap between predicted probability and the share of pet pixels, averaged over 10 bins), with a reliability plot. "
        "On --split val the best threshold is kept for infer and serve with the same --weights and --tta; choose on val, never on test (test only reports).",
    ),
    model_file: Optional[Path] = typer.Option(
        None, "--model-file", help="Score this exported .onnx file of the run's weights (petseg export) instead of the run's own model, "
        "on onnxruntime or OpenVINO (--runtime); its files are named for the file, the runtime and the precision (one RUN).",
    ),
    runtime: Optional[str] = RUNTIME,
    tta_scales: Optional[str] = typer.Option(
        None, "--tta-scales", metavar="S,S,...",
        help="Multi-scale TTA: average the softmax at these scales of the model's size (e.g. 0.75,1,1.25; each side "
        "rounded to a multiple of 32), with --tta each with its flip. Costs the sum of the squared scales times one pass "
        "(3.1x for 0.75,1,1.25; 6.3x with --tta) for +0.002 val Dice in the recipe ablation (docs/recipes.md). Evaluate only: infer and serve predict at one scale, "
        "so a threshold swept with it is not kept for them.",
    ),
    config: Optional[Path] = CONFIG,
) -> None:
    """Score runs on a split: a table, and files in each run.

    Prints a table and writes eval-<tag>.json and eval-<tag>.csv into each run."""
    from ..commands.evaluate import evaluate as evaluate_runs
    from .render import evaluation_details, evaluation_table, evaluation_title, sweep_line

    def go():
        settings = load_settings(config, {"train": {"device": device}})
        options = EvaluateOptions(
            split=split, weights=weights, at=at, data_dir=data_dir, batch_size=batch_size,
            device=settings.train.device, precision=precision, tta=tta, visualize=visualize, worst=worst,
            by=tuple(by or ()), thresholds=thresholds, model_file=model_file,
            runtime=runtime or (settings.serve.runtime if model_file else None), tta_scales=tta_scales,
        )
        return evaluate_runs(run_dirs, options)

    evaluations = run_command(go)
    for evaluation in evaluations:
        info(f"{evaluation.run_dir}: wrote {', '.join(p.name for p in evaluation.written)}")
    print_table(evaluation_table(evaluations, evaluation_title(split, weights, at, tta, evaluations)))
    for evaluation in evaluations:
        for table in evaluation_details(evaluation):
            print_table(table)
        if evaluation.sweep:
            info(sweep_line(evaluation))


@app.command()
def infer(
    inputs: list[str] = typer.Argument(..., metavar="INPUT", help="Image files, directories or globs."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help=f"A .png file for one image, else a directory (default: ./{DEFAULT_OUTPUT_DIR})."
    ),
    run: Optional[Path] = typer.Option(
        None, "--run", help="Run directory or exported .onnx file (default: of the runs under --runs-dir, one trained on the most images, with the best val Dice)."
    ),
    runs_dir: Optional[Path] = typer.Option(
        None, "--runs-dir",
        help=f"Where to look for runs when --run is not given (default: train.runs_dir in petseg.toml, else {DEFAULTS.train.runs_dir}).",
    ),
    overlay: bool = typer.Option(False, "--overlay", help="Also write <stem>_overlay.jpg: the photo, pet tinted and outlined."),
    probs: bool = typer.Option(False, "--probs", help="Write the pet probability (0-255) instead of a 0/255 mask."),
    cutout: bool = typer.Option(False, "--cutout", help="Also write <stem>_cutout.png: the pet on transparency, edges soft."),
    background: Optional[str] = typer.Option(
        None, "--background", metavar="COLOUR", help="The cut-out on this colour (#ffffff, white …) as RGB, not transparent."
    ),
    coco: Optional[Path] = typer.Option(
        None, "--coco", metavar="FILE.json", help="Also write every mask into one COCO results file (compressed RLE).",
    ),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", metavar="P",
        help="Pet where the probability is at least P (default: the run's, chosen on val by evaluate --thresholds, else 0.5).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace output files that already exist."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Take images from subdirectories too (and ** in globs)."),
    batch_size: int = typer.Option(INFER_DEFAULTS.batch_size, "--batch-size", "-b", help="Images per batch."),
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
    precision: Optional[str] = PRECISION,
    tta: bool = TTA,
    model_file: Optional[Path] = typer.Option(
        None, "--model-file", help="An exported .onnx model (petseg export) to run with onnxruntime or OpenVINO (--runtime); torch is not imported.",
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for the model (default: the cores this process may use)."),
    runtime: Optional[str] = RUNTIME,
    config: Optional[Path] = CONFIG,
) -> None:
    """Predict a pet mask for each input image.

    Each mask is a PNG of the same size as its image. --run (or --model-file) may name an exported .onnx
    file: onnxruntime or OpenVINO (--runtime) runs it, without torch."""
    from ..commands.infer import infer as infer_masks

    def go():
        settings = load_settings(
            config, {"train": {"device": device, "runs_dir": str(runs_dir) if runs_dir else None}, "serve": {"runtime": runtime}},
        )
        options = InferOptions(
            output=output, run=run, runs_dir=Path(settings.train.runs_dir), overlay=overlay, probs=probs,
            overwrite=overwrite, recursive=recursive, batch_size=batch_size, device=settings.train.device, tta=tta,
            model_file=model_file, threads=threads, weights=weights, precision=precision, cutout=cutout,
            background=background, coco=coco, threshold=threshold, runtime=settings.serve.runtime,
        )
        return infer_masks(inputs, options)

    result = run_command(go)
    print_lines([str(path) for path in result.written], fit=False)
    what = "probability maps" if result.probs else "masks"
    info(f"{what} written: {result.images}" + (f", failed: {len(result.failed)}" if result.failed else ""))
    if result.coco_file is not None:
        info(f"COCO results of {len(result.coco)} image(s) written to {result.coco_file}")
    raise typer.Exit(result.exit_code)


@app.command()
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="The run directory whose model to export.", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The file to write (default: RUN/model.onnx)."),
    output_format: str = typer.Option(EXPORT_DEFAULTS.format, "--format", help=f"{' or '.join(FORMATS)} (TorchScript was dropped)."),
    weights: str = typer.Option(EXPORT_DEFAULTS.weights, "--weights", help="best (best.pth) or last (last.pth)."),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help="The size images are resized to when served, a multiple of 32 (default: the run's)."
    ),
    dynamic: bool = typer.Option(
        EXPORT_DEFAULTS.dynamic, "--dynamic/--static",
        help="Any batch size, height and width (multiples of 32), or a fixed 1x3xNxN input (--image-size).",
    ),
    opset: int = typer.Option(EXPORT_DEFAULTS.opset, "--opset", help=f"ONNX opset, {MIN_OPSET} or later."),
    fp16: bool = typer.Option(EXPORT_DEFAULTS.fp16, "--fp16", help="float16 weights and arithmetic (for GPUs), checked like fp32."),
    overwrite: bool = typer.Option(EXPORT_DEFAULTS.overwrite, "--overwrite", help="Replace the output file if it exists."),
    int8: bool = typer.Option(
        EXPORT_DEFAULTS.int8, "--int8",
        help="Write an int8 model for CPUs instead (to RUN/model.int8.onnx unless --output says): onnxruntime static quantization "
        "(QDQ: quantize/dequantize pairs around each int8 operator; per-channel int8 weights, uint8 activations) calibrated on --calibration training photos; the "
        "method (minmax or percentile) and the layers kept in fp32 chosen by agreement with the fp32 model on "
        "validation photos; written only if it passes the self-check (--min-agreement). It quantizes RUN/model.onnx when that "
        "file is this export's fp32 model (same weights and options, by its metadata), else exports the fp32 model first.",
    ),
    calibration: int = typer.Option(EXPORT_DEFAULTS.calibration, "--calibration", help="--int8: training photos (a seeded choice) to calibrate on."),
    min_agreement: float = typer.Option(
        EXPORT_DEFAULTS.min_agreement, "--min-agreement",
        help="--int8: share of validation pixels on which the int8 mask must equal the fp32 model's for the file to be written; lower it with care.",
    ),
    device: Optional[str] = DEVICE,
    config: Optional[Path] = CONFIG,
) -> None:
    """Export a run's model to ONNX.

    The export is checked against torch before it is written.

    The file carries what inference needs (model, image size, normalisation, val Dice, weights' SHA-256)."""
    from ..export.command import export as export_model

    def go():
        options = ExportOptions(
            output=output, format=output_format, weights=weights, image_size=image_size, dynamic=dynamic, opset=opset,
            fp16=fp16, overwrite=overwrite, int8=int8, calibration=calibration, min_agreement=min_agreement,
            device=load_settings(config, {"train": {"device": device}}).train.device,
        )
        if int8 and min_agreement < EXPORT_DEFAULTS.min_agreement:
            warn(f"--min-agreement {min_agreement:g} is below the default {EXPORT_DEFAULTS.min_agreement:g}: the int8 masks may differ visibly from the fp32 model's")
        return export_model(run, options)

    print_lines(run_command(go).report())


@app.command()
def compare(
    runs: Optional[list[Path]] = typer.Argument(
        None, metavar="RUN", show_default=False,
        help="Run directories; a glob like runs/* is fine: other paths are skipped with a warning "
        "(default: every run under train.runs_dir of petseg.toml).",
    ),
    sort: str = typer.Option(DEFAULT_SORT, "--sort", help=f"Order by this column, best first: {', '.join(COLUMN_KEYS)}."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table (Rich), or plain text for a report or a program."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw every run's val Dice and train loss per epoch into this PNG file."),
    columns: Optional[str] = typer.Option(
        None, "--columns", metavar="KEY,KEY...",
        help=f"Table columns to show, or {ALL_COLUMNS}; csv and json always hold every field. Keys: "
        f"{', '.join(COLUMN_KEYS)} (default: as many as fit the terminal, the least important left out first).",
    ),
    data: Optional[str] = typer.Option(
        None, "--data", metavar="NAME",
        help="Show the test figures on this data set (a data directory's name, or the key in its evaluation "
        "files' names, e.g. other-pets-1a2b3c4d) instead of each run's own: evaluate it first with "
        "petseg evaluate RUN --data-dir DIR.",
    ),
    config: Optional[Path] = CONFIG,
) -> None:
    """Compare runs side by side: Dice, size, data and time.

    One row per run; the table fits the terminal (see --columns)."""
    from ..commands.compare import compare as compare_runs
    from ..commands.compare import render_text
    from .render import comparison_table, terminal_width

    def go():
        from ..run import list_runs

        run_dirs = runs or list_runs(Path(load_settings(config).train.runs_dir))
        return compare_runs(run_dirs, sort=sort, output_format=output_format, plot=plot, columns=columns, width=terminal_width(), data=data)

    result = run_command(go)
    for line in result.skipped:
        warn(line)
    if output_format is OutputFormat.table:
        print_table(comparison_table(result.records, result.columns, result.data))
    else:
        sys.stdout.write(render_text(result.records, output_format, result.columns) + "\n")
    if result.curves is not None:
        info(f"curves of {len(result.records)} run(s) written to {result.curves}")


@app.command()
def summary(
    target: str = typer.Argument(
        ..., help="A model name (unet, resnet34-unet) or a run directory (its model, image size and training).", show_default=False
    ),
    image_size: Optional[int] = typer.Option(
        None, "--image-size",
        help=f"Square input size, a multiple of 32 (default: the run's, else petseg.toml's, else {DEFAULTS.data.image_size}).",
    ),
    depth: int = typer.Option(DEFAULT_DEPTH, "--depth", help="List modules down to this nesting depth."),
    no_cbam: bool = typer.Option(False, "--no-cbam", help="resnet34-unet without CBAM (Convolutional Block Attention Module: channel and spatial attention) in the decoder (for a model name)."),
    plot: bool = typer.Option(False, "--plot", help="Write the run's val Dice and train loss curves to curves.png in it."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Lay a model open, or a run with its training.

    Modules, shapes, parameters, GFLOPs and memory; for a run also its settings and curves."""
    from .render import key_value_table, modules_table
    from ..commands.summary import summary as summarize

    result = run_command(summarize, target, image_size=image_size, depth=depth, no_cbam=no_cbam, plot=plot, config=config)
    if result.training is not None:
        print_table(key_value_table(result.training))
        out.print()
    out.print(f"[bold]{result.label}[/] at {result.image_size}x{result.image_size}, one image")
    print_table(modules_table(result.model))
    print_table(key_value_table(result.totals))
    if result.curves is not None:
        info(f"curves written to {result.curves}")


app.command()(serve)  # its options: cli_serve.py

app.command()(machine)  # its options: cli_machine.py

VISUALIZE_OPTION = "--visualize"


def fill_optional_values(args: list[str]) -> list[str]:
    """Typer has no option whose value may be left out: ``evaluate``'s ``--visualize`` not followed by a
    count gets the default one, so ``evaluate RUN --visualize`` and ``evaluate --visualize RUN`` both work.
    A number that names an existing file or directory (a run called 2024) is a RUN, not the count
    (``--visualize=N`` is always a count). Other commands' arguments are left as they are."""
    if args[:1] != ["evaluate"]:
        return list(args)
    filled: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            return filled + args[index:]
        filled.append(arg)
        following = args[index + 1] if index + 1 < len(args) else ""
        if arg == VISUALIZE_OPTION and not (following.isdigit() and not Path(following).exists()):
            filled.append(str(DEFAULT_VISUALIZE))
    return filled


def main() -> None:
    from ..base.console import PipeSafe

    sys.stdout = PipeSafe(sys.stdout)  # `petseg ... | head`: quiet, exit status unchanged
    sys.stderr = PipeSafe(sys.stderr)  # `petseg ... 2>&1 | head`: the same for warnings and progress
    if sys.argv[1:2] in (["train"], ["serve"]):
        # Before anything is loaded: training and a long-running service are faster with tcmalloc (once;
        # see allocator.py). Here, not in the command, so that the app invoked inside another process
        # never replaces it.
        from ..machine.allocator import reexecute_with_tcmalloc

        reexecute_with_tcmalloc()
    try:
        app(args=fill_optional_values(sys.argv[1:]), prog_name="petseg")
    except SystemExit as end:
        from ..machine.compile import leave_now_if_compiling

        leave_now_if_compiling(end.code)  # a budgeted compiled run: its files are written, do not wait for the thread
        raise


if __name__ == "__main__":
    sys.exit(main())
