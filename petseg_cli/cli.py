"""The ``petseg`` command: parses options, calls one library function per subcommand, prints.

Heavy modules (torch, albumentations, matplotlib) are imported inside the commands, so ``petseg --help``
stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperArgument, TyperGroup

from . import __version__
from .compare import ALL_COLUMNS, COLUMN_KEYS, DEFAULT_SORT, OutputFormat
from .console import err, error, out
from .errors import PetsegError, UsageError
from .evaluate import DEFAULT_VISUALIZE, EvaluateOptions
from .evaluate import evaluate as evaluate_runs
from .export import FORMATS, MIN_OPSET, ExportOptions
from .infer import DEFAULT_OUTPUT_DIR, InferOptions
from .infer import infer as infer_masks
from .settings import AUTO_WORKERS, DEFAULTS, load_settings, validate
from .summary import DEFAULT_DEPTH

class PlainArgument(TyperArgument):
    """An argument shown as click shows them: ``RUN...`` in the usage line, no ``<list[Path]>`` type."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx) -> None:
        return None


def plain_reason(exc: typer.BadParameter) -> str:
    """A bad value's reason in petseg's words, not the validation library's ("Value error, ...",
    "Input should be a valid integer, unable to parse string as an integer")."""
    details = getattr(exc.__cause__, "errors", None)
    if callable(details):
        first = (details() or [{}])[0]
        kind, value = first.get("type", ""), first.get("input")
        if kind.startswith("int_"):
            return f"{value!r} is not a whole number"
        if kind.startswith("float_"):
            return f"{value!r} is not a number"
        if kind.startswith("bool_"):
            return f"{value!r} is not true or false"
    return exc.message.removeprefix("Value error, ")


class PetsegGroup(TyperGroup):
    """The ``petseg`` group: plain argument names in usage lines and plain reasons for bad values."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        for param in getattr(command, "params", []):
            if type(param) is TyperArgument:
                param.__class__ = PlainArgument
        return command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:
            exc.message = plain_reason(exc)
            raise


app = typer.Typer(
    cls=PetsegGroup,
    help="Train, evaluate and serve pet-vs-background segmentation models on the Oxford-IIIT Pet dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: drawing it with Rich would double the start-up time
    context_settings={"help_option_names": ["-h", "--help"]},
)

CONFIG_HELP = "Project config file (default: ./petseg.toml when it exists)."


def fail(message: str, code: int = 1) -> None:
    error(message)
    raise typer.Exit(code)


def run_command(function, *args, **kwargs):
    """Call a library function; a PetsegError becomes one line on stderr, Ctrl-C exit code 130."""
    try:
        return function(*args, **kwargs)
    except PetsegError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)


def print_lines(lines: list[str]) -> None:
    for line in lines:
        out.print(line, soft_wrap=True, markup=False)


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




def by_recipe(section: str, key: str) -> str:
    """A recipe knob's default for --help: the default recipe's value, and the seed recipe's."""
    from .recipes import SEED, recipe_table

    value = getattr(getattr(DEFAULTS, section), key)
    seed = recipe_table(SEED)[section][key]
    return f"default: {value}; --recipe seed: {seed}"


def on_off(flag: bool | str) -> str:
    """A switch's default for --help: on, off, or a word such as auto."""
    return flag if isinstance(flag, str) else "on" if flag else "off"


@app.command()
def download(
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help=f"Where the dataset goes (default: {DEFAULTS.data.data_dir}); archives go beside it."
    ),
    mirror: Optional[str] = typer.Option(
        None, "--mirror", metavar="URL",
        help="Base URL holding images.tar.gz and annotations.tar.gz, instead of the official site "
        "(default: $PETSEG_MIRROR, else download.mirror in petseg.toml).",
    ),
    md5: Optional[List[str]] = typer.Option(
        None, "--md5", metavar="NAME=HASH",
        help="Expected MD5 of an archive, images=HASH or annotations=HASH, for a mirror that repackages "
        "(repeatable; default: download.images_md5 / annotations_md5 in petseg.toml, else the release's).",
    ),
    keep_archives: bool = typer.Option(False, "--keep-archives", help="Keep the verified archives after extraction."),
    force: bool = typer.Option(
        False, "--force", help="Download and extract again, replacing the data directory once the new data is complete."
    ),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Download, verify and extract the Oxford-IIIT Pet release.

    A second run does nothing once the data is complete and verified."""

    def go():
        from .data.download import download_dataset, md5_overrides

        overrides = {
            "data": {"data_dir": str(data_dir) if data_dir else None},
            "download": {"mirror": mirror, **md5_overrides(md5 or [])},
        }
        return download_dataset(load_settings(config, overrides), keep_archives=keep_archives, force=force)

    print_lines(run_command(go).report())


# Settings whose flag is not --<key with dashes>, for messages that name the flag.
TRAIN_FLAG_NAMES = {("model", "name"): "--model", ("model", "cbam"): "--no-cbam", ("augment", "enabled"): "--no-augment"}


@app.command()
def train(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Model: unet or resnet34-unet (default: {DEFAULTS.model.name})."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help=f"Epochs to train (default: {DEFAULTS.train.epochs})."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help=f"Images per batch (default: {DEFAULTS.train.batch_size})."),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help=f"Where the knobs below start: default (the best measured) or seed (the reference "
        f"report's: Adam 1e-4, cross-entropy, plateau) (default: {DEFAULTS.train.recipe})."
    ),
    learning_rate: Optional[float] = typer.Option(
        None, "--learning-rate", "-lr", help=f"Peak learning rate ({by_recipe('train', 'learning_rate')})."
    ),
    loss: Optional[str] = typer.Option(
        None, "--loss", help=f"ce (cross-entropy), dice (soft Dice per image) or ce+dice ({by_recipe('train', 'loss')})."
    ),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help=f"adam or adamw ({by_recipe('train', 'optimizer')})."),
    weight_decay: Optional[float] = typer.Option(
        None, "--weight-decay", help=f"Weight decay (L2 for adam, decoupled for adamw) ({by_recipe('train', 'weight_decay')})."
    ),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="plateau (cut on a val Dice plateau, per epoch), cosine or onecycle (per batch) "
        f"({by_recipe('train', 'scheduler')})."
    ),
    warmup_epochs: Optional[int] = typer.Option(
        None, "--warmup-epochs", help=f"Epochs of rising learning rate for cosine and onecycle ({by_recipe('train', 'warmup_epochs')})."
    ),
    ema: Optional[float] = typer.Option(
        None, "--ema", metavar="DECAY", help="Validate and save an exponential moving average of the weights with this "
        f"decay per step; 0 = off ({by_recipe('train', 'ema')})."
    ),
    affine: Optional[float] = typer.Option(
        None, "--affine", metavar="P", help=f"Probability of a random scale/shift/rotation ({by_recipe('augment', 'affine')})."
    ),
    random_resized_crop: Optional[float] = typer.Option(
        None, "--random-resized-crop", metavar="P",
        help=f"Probability of a random crop resized back to full size ({by_recipe('augment', 'random_resized_crop')}).",
    ),
    color_jitter: Optional[float] = typer.Option(
        None, "--color-jitter", metavar="P",
        help=f"Probability of random brightness/contrast/saturation/hue ({by_recipe('augment', 'color_jitter')}).",
    ),
    encoder_weights: Optional[str] = typer.Option(
        None, "--encoder-weights", metavar="none|imagenet|PATH",
        help="resnet34-unet's encoder starts from: none (random), imagenet (torchvision's ResNet34, downloaded "
        f"once into the torch hub cache) or a torchvision ResNet34 state dict file (default: {DEFAULTS.model.encoder_weights}).",
    ),
    freeze_encoder_epochs: Optional[int] = typer.Option(
        None, "--freeze-encoder-epochs", metavar="N",
        help=f"Train only the decoder for the first N epochs (default: {DEFAULTS.train.freeze_encoder_epochs}).",
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=f"Dataset directory (default: {DEFAULTS.data.data_dir})."),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help=f"Train at this square size, a multiple of 32 (default: {DEFAULTS.data.image_size})."
    ),
    fraction: Optional[float] = typer.Option(
        None, "--fraction", metavar="F",
        help=f"Train on this fraction of the train split, drawn with the seed; val shrinks alike (default: {DEFAULTS.data.fraction}).",
    ),
    limit: Optional[int] = typer.Option(
        None, "--limit", metavar="N",
        help="Train on at most N train images (val shrinks alike); 0: no limit (default: no limit).",
    ),
    keep_optimizer: Optional[bool] = typer.Option(
        None, "--keep-optimizer/--drop-optimizer",
        help=f"Keep the optimiser state in last.pth once the run finishes, so that it can be resumed; "
        f"dropping it makes last.pth about a third of the size (default: {'keep' if DEFAULTS.train.keep_optimizer else 'drop'}).",
    ),
    no_cbam: bool = typer.Option(False, "--no-cbam", help="resnet34-unet without CBAM attention in the decoder."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Train without data augmentation."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: <model>-bs<batch>, then -2, -3 …)."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help=f"Where run directories go (default: {DEFAULTS.train.runs_dir})."),
    device: Optional[str] = typer.Option(None, "--device", help=f"auto, cpu, cuda or cuda:N (default: {DEFAULTS.train.device})."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help=f"DataLoader worker processes; {AUTO_WORKERS} = chosen from the machine's cores and device (default: {DEFAULTS.train.workers})."
    ),
    precision: Optional[str] = typer.Option(
        None, "--precision", help=f"auto, fp32, bf16 or fp16; auto = bf16 where it outruns fp32 (GPUs from Ampere on, CPUs with AMX), fp16 on older GPUs, else fp32 (default: {DEFAULTS.train.precision})."
    ),
    channels_last: Optional[bool] = typer.Option(
        None, "--channels-last/--no-channels-last", help=f"NHWC memory format for model and batches; auto = on GPUs and with bf16, off for fp32 on a CPU (default: {on_off(DEFAULTS.train.channels_last)})."
    ),
    compile_model: Optional[bool] = typer.Option(
        None, "--compile/--no-compile", help=f"torch.compile the model; auto = on CUDA GPUs and on CPUs with bf16 matrix units (AMX) when the run is long enough to repay compiling, off for fp32 on a CPU (default: {on_off(DEFAULTS.train.compile)})."
    ),
    cache: Optional[bool] = typer.Option(
        None, "--cache/--no-cache", help=f"Decode the dataset once into a memory-mapped cache (default: {on_off(DEFAULTS.data.cache)})."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Random seed (weights, order, augmentation) (default: {DEFAULTS.train.seed})."),
    patience: Optional[int] = typer.Option(
        None, "--patience", help=f"Stop after this many epochs without a better val Dice (default: {DEFAULTS.train.patience})."
    ),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue this run directory from its last finished epoch (its settings, then these flags)."
    ),
    download_data: bool = typer.Option(
        False, "--download", help="When the dataset is missing, download it first (as petseg download does)."
    ),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Train a model into a new run directory under runs/.

    Under torchrun (torchrun --nproc_per_node N -m petseg_cli train ...) N processes train together.
    """
    overrides = {
        "model": {"name": model, "cbam": False if no_cbam else None, "encoder_weights": encoder_weights},
        "data": {"data_dir": str(data_dir) if data_dir else None, "image_size": image_size, "cache": cache,
                 "fraction": fraction, "limit": limit},
        "augment": {
            "enabled": False if no_augment else None,
            "affine": affine,
            "random_resized_crop": random_resized_crop,
            "color_jitter": color_jitter,
        },
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "recipe": recipe,
            "learning_rate": learning_rate,
            "loss": loss,
            "optimizer": optimizer,
            "weight_decay": weight_decay,
            "scheduler": scheduler,
            "warmup_epochs": warmup_epochs,
            "ema": ema,
            "freeze_encoder_epochs": freeze_encoder_epochs,
            "runs_dir": str(runs_dir) if runs_dir else None,
            "device": device,
            "workers": workers,
            "precision": precision,
            "channels_last": channels_last,
            "compile": compile_model,
            "seed": seed,
            "patience": patience,
            "keep_optimizer": keep_optimizer,
        },
    }

    def go():
        from .runs import read_config
        from .train import check_resume_overrides
        from .train import train as train_model

        base = None
        if resume is not None:
            for flag, value in (("--name", name), ("--config", config)):
                if value is not None:
                    raise UsageError(f"{flag} cannot be used with --resume: a resumed run keeps its name and its own config.toml")
            base = read_config(resume)[0]
            check_resume_overrides(resume, base, overrides, TRAIN_FLAG_NAMES)
        settings = load_settings(config, overrides, base=base)
        if download_data:
            from .data.download import download_if_missing

            fetched = download_if_missing(validate(settings))  # a bad flag fails before a long download
            print_lines(fetched.report() if fetched else [])
        return train_model(settings, name=name, resume=resume)

    result = run_command(go)
    raise typer.Exit(result.exit_code)


EVALUATE_DEFAULTS, INFER_DEFAULTS = EvaluateOptions(), InferOptions()


@app.command()
def evaluate(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN", help="Run directories to score (one table row each)."),
    split: str = typer.Option(EVALUATE_DEFAULTS.split, "--split", help="Split to score: test, val or train."),
    weights: str = typer.Option(EVALUATE_DEFAULTS.weights, "--weights", help="best (best.pth) or last (last.pth)."),
    at: str = typer.Option(
        EVALUATE_DEFAULTS.at, "--at",
        help="Score at each image's own size (original: probabilities upsampled, full-size trimaps) or at the "
        "run's training size (training: fast, the figure validation reports).",
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Dataset directory (default: the one each run was trained on)."
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per batch (default: the run's own)."),
    device: Optional[str] = typer.Option(
        None, "--device", help=f"auto, cpu, cuda or cuda:N (default: train.device in petseg.toml, else {DEFAULTS.train.device})."
    ),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="fp32, bf16, fp16 or auto (default: the run's own precision setting, as its validation used)."
    ),
    tta: bool = typer.Option(False, "--tta", help="Average the softmax of each image and of its horizontal flip."),
    visualize: int = typer.Option(
        EVALUATE_DEFAULTS.visualize, "--visualize", metavar="[N]", show_default=False,
        help=f"Save samples-<tag>.png, a grid of N images ({DEFAULT_VISUALIZE} when no number follows; "
        "without --visualize, none).",
    ),
    worst: bool = typer.Option(False, "--worst", help="With --visualize: the N lowest-Dice images, not the first N."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Score runs on a split: a table, and files in each run.

    Prints a table and writes eval-<tag>.json and eval-<tag>.csv into each run."""

    def go():
        settings = load_settings(config, {"train": {"device": device}})
        options = EvaluateOptions(
            split=split, weights=weights, at=at, data_dir=data_dir, batch_size=batch_size,
            device=settings.train.device, precision=precision, tta=tta, visualize=visualize, worst=worst,
        )
        return evaluate_runs(run_dirs, options)

    run_command(go)


@app.command()
def infer(
    inputs: list[str] = typer.Argument(..., metavar="INPUT", help="Image files, directories or globs."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help=f"A .png file for one image, else a directory (default: ./{DEFAULT_OUTPUT_DIR})."
    ),
    run: Optional[Path] = typer.Option(None, "--run", help="Run directory (default: the best val Dice under --runs-dir)."),
    runs_dir: Optional[Path] = typer.Option(
        None, "--runs-dir",
        help=f"Where to look for runs when --run is not given (default: train.runs_dir in petseg.toml, else {DEFAULTS.train.runs_dir}).",
    ),
    overlay: bool = typer.Option(False, "--overlay", help="Also write <stem>_overlay.jpg: the photo, pet tinted and outlined."),
    probs: bool = typer.Option(False, "--probs", help="Write the pet probability (0-255) instead of a 0/255 mask."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace output files that already exist."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Take images from subdirectories too (and ** in globs)."),
    batch_size: int = typer.Option(INFER_DEFAULTS.batch_size, "--batch-size", "-b", help="Images per batch."),
    device: Optional[str] = typer.Option(
        None, "--device",
        help=f"auto, cpu, cuda or cuda:N; with an .onnx model, onnxruntime's CUDA or CPU provider "
        f"(default: train.device in petseg.toml, else {DEFAULTS.train.device}).",
    ),
    tta: bool = typer.Option(False, "--tta", help="Average the softmax of each image and of its horizontal flip."),
    model_file: Optional[Path] = typer.Option(
        None, "--model-file",
        help="An exported .onnx model (petseg export) to run with onnxruntime instead of a run; torch is not imported.",
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="Threads for the model (default: the cores this process may use)."
    ),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Predict a pet mask for each input image.

    Each mask is a PNG of the same size as its image. --run (or --model-file) may name an exported .onnx
    file: onnxruntime serves it, without torch."""

    def go():
        settings = load_settings(
            config, {"train": {"device": device, "runs_dir": str(runs_dir) if runs_dir else None}}
        )
        options = InferOptions(
            output=output, run=run, runs_dir=Path(settings.train.runs_dir), overlay=overlay, probs=probs,
            overwrite=overwrite, recursive=recursive, batch_size=batch_size, device=settings.train.device, tta=tta,
            model_file=model_file, threads=threads,
        )
        return infer_masks(inputs, options)

    result = run_command(go)
    raise typer.Exit(result.exit_code)


EXPORT_DEFAULTS = ExportOptions()


@app.command()
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="The run directory whose model to export.", show_default=False),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="The file to write (default: RUN/model.onnx, or RUN/model.torchscript)."
    ),
    output_format: str = typer.Option(EXPORT_DEFAULTS.format, "--format", help=f"{' or '.join(FORMATS)}."),
    weights: str = typer.Option(EXPORT_DEFAULTS.weights, "--weights", help="best (best.pth) or last (last.pth)."),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help="The size images are resized to when served, a multiple of 32 (default: the run's)."
    ),
    dynamic: bool = typer.Option(
        EXPORT_DEFAULTS.dynamic, "--dynamic/--static",
        help="Any batch size, height and width (multiples of 32), or a fixed 1x3xNxN input (--image-size).",
    ),
    opset: int = typer.Option(EXPORT_DEFAULTS.opset, "--opset", help=f"ONNX opset, {MIN_OPSET} or later."),
    fp16: bool = typer.Option(EXPORT_DEFAULTS.fp16, "--fp16", help="ONNX only: float16 weights and arithmetic (for GPUs), checked like fp32."),
    overwrite: bool = typer.Option(EXPORT_DEFAULTS.overwrite, "--overwrite", help="Replace the output file if it exists."),
    int8: bool = typer.Option(
        EXPORT_DEFAULTS.int8, "--int8",
        help="Write an int8 model for CPUs instead (default RUN/model.int8.onnx): onnxruntime static quantization "
        "(QDQ, per-channel int8 weights, uint8 activations) calibrated on --calibration training photos; the "
        "calibration method (minmax or percentile) and the layers kept in fp32 (first conv, head, sigmoid gates) "
        "are chosen by agreement with the fp32 model on the validation photos, on 16 photos to stay quick "
        "(a few minutes on 2 cores). Written only if it passes the self-check (--min-agreement).",
    ),
    calibration: int = typer.Option(EXPORT_DEFAULTS.calibration, "--calibration", help="--int8: training photos (a seeded choice) to calibrate on."),
    min_agreement: float = typer.Option(
        EXPORT_DEFAULTS.min_agreement, "--min-agreement",
        help="--int8: share of validation pixels on which the int8 mask must equal the fp32 model's for the file to be written; lower it with care.",
    ),
) -> None:
    """Export a run's model to ONNX or TorchScript.

    The export is checked against torch before it is written.

    The file carries what inference needs (model, image size, normalisation, val Dice, weights' SHA-256)."""
    from .export import export as export_model

    options = ExportOptions(
        output=output, format=output_format, weights=weights, image_size=image_size, dynamic=dynamic,
        opset=opset, fp16=fp16, overwrite=overwrite, int8=int8, calibration=calibration, min_agreement=min_agreement,
    )
    if int8 and min_agreement < EXPORT_DEFAULTS.min_agreement:
        from .console import warn

        warn(f"--min-agreement {min_agreement:g} is below the default {EXPORT_DEFAULTS.min_agreement:g}: the int8 masks may differ visibly from the fp32 model's")
    print_lines(run_command(export_model, run, options).report())


@app.command()
def compare(
    runs: Optional[list[Path]] = typer.Argument(
        None, metavar="RUN",
        help="Run directories (a glob like runs/* is fine: other paths are skipped with a warning; "
        "default: every run under train.runs_dir of petseg.toml).",
        show_default=False,
    ),
    sort: str = typer.Option(DEFAULT_SORT, "--sort", help=f"Order by this column, best first: {', '.join(COLUMN_KEYS)}."),
    output_format: OutputFormat = typer.Option(
        OutputFormat.table, "--format", help="table (Rich), or plain text for a report or a program."
    ),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Also draw every run's val Dice and train loss per epoch into this PNG file."
    ),
    columns: Optional[str] = typer.Option(
        None, "--columns", metavar="KEY,KEY...",
        help=f"Table columns to show, or {ALL_COLUMNS}; default: as many as fit the terminal, the least "
        f"important left out first (csv and json always hold every field). Keys: {', '.join(COLUMN_KEYS)}.",
    ),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Compare runs side by side: Dice, size, data and time.

    One row per run; the table fits the terminal (see --columns)."""
    from .compare import compare as compare_runs

    def go():
        from .runs import list_runs

        run_dirs = runs or list_runs(Path(load_settings(config).train.runs_dir))
        return compare_runs(run_dirs, sort=sort, output_format=output_format, plot=plot, columns=columns)

    run_command(go)


@app.command()
def summary(
    target: str = typer.Argument(
        ..., help="A model name (unet, resnet34-unet) or a run directory (its model, image size and training).",
        show_default=False,
    ),
    image_size: Optional[int] = typer.Option(
        None, "--image-size",
        help=f"Square input size, a multiple of 32 (default: the run's, else petseg.toml's, else {DEFAULTS.data.image_size}).",
    ),
    depth: int = typer.Option(DEFAULT_DEPTH, "--depth", help="List modules down to this nesting depth."),
    no_cbam: bool = typer.Option(False, "--no-cbam", help="resnet34-unet without CBAM attention (for a model name)."),
    plot: bool = typer.Option(False, "--plot", help="Write the run's val Dice and train loss curves to curves.png in it."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Lay a model open, or a run with its training.

    Modules, shapes, parameters, GFLOPs and memory; for a run also its settings and curves."""
    from .summary import summary as summarize

    run_command(summarize, target, image_size=image_size, depth=depth, no_cbam=no_cbam, plot=plot, config=config)


sv = DEFAULTS.serve


@app.command()
def serve(
    source: Path = typer.Argument(
        ..., metavar="RUN|MODEL.onnx", help="A run directory (its best.pth) or an exported .onnx model file.",
        show_default=False,
    ),
    host: Optional[str] = typer.Option(
        None, "--host", help=f"Address to listen on; any but a loopback address lets other machines in (default: {sv.host})."
    ),
    port: Optional[int] = typer.Option(None, "--port", help=f"TCP port; 0 = any free port, which the startup line names (default: {sv.port})."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help=f"Server processes, each with its own copy of the model (default: {sv.workers})."
    ),
    device: Optional[str] = typer.Option(None, "--device", help=f"auto, cpu, cuda or cuda:N (default: {sv.device})."),
    max_image_mb: Optional[float] = typer.Option(
        None, "--max-image-mb", help=f"Refuse uploads larger than this many MiB with 413 (default: {sv.max_image_mb:g})."
    ),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", help=f"Refuse images declaring more pixels than this, before decoding them (default: {sv.max_pixels:,})."
    ),
    max_batch: Optional[int] = typer.Option(
        None, "--max-batch", help=f"Run at most this many concurrent requests' images through the model together; 1 = no batching (default: {sv.max_batch})."
    ),
    batch_wait_ms: Optional[float] = typer.Option(
        None, "--batch-wait-ms", help=f"Wait at most this long after a request for others to batch with it (default: {sv.batch_wait_ms:g})."
    ),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Serve masks over HTTP, with a page to try it.

    POST /v1/masks answers a mask, an overlay or JSON; GET /v1/model, /healthz and /readyz describe the
    service; GET / is the page."""
    overrides = {
        "serve": {
            "host": host, "port": port, "workers": workers, "device": device, "max_image_mb": max_image_mb,
            "max_pixels": max_pixels, "max_batch": max_batch, "batch_wait_ms": batch_wait_ms,
        }
    }

    def go():
        from .serve.server import serve as serve_source

        return serve_source(source, load_settings(config, overrides).serve)

    raise typer.Exit(run_command(go))


VISUALIZE_OPTION = "--visualize"


def fill_optional_values(args: list[str]) -> list[str]:
    """Typer has no option whose value may be left out: ``--visualize`` not followed by a number gets
    the default count, so ``evaluate RUN --visualize`` and ``evaluate --visualize RUN`` both work."""
    filled: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            return filled + args[index:]
        filled.append(arg)
        following = args[index + 1] if index + 1 < len(args) else ""
        if arg == VISUALIZE_OPTION and not following.isdigit():
            filled.append(str(DEFAULT_VISUALIZE))
    return filled


def main() -> None:
    from .console import PipeSafe

    sys.stdout = PipeSafe(sys.stdout)  # `petseg ... | head`: quiet, exit status unchanged
    if sys.argv[1:2] in (["train"], ["serve"]):
        # Before anything is loaded: training and a long-running service are faster with tcmalloc (once;
        # see allocator.py). Here, not in the command, so that the app invoked inside another process
        # never replaces it.
        from .machine.allocator import reexecute_with_tcmalloc

        reexecute_with_tcmalloc()
    app(args=fill_optional_values(sys.argv[1:]), prog_name="petseg")


if __name__ == "__main__":
    sys.exit(main())
