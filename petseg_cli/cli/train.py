"""``petseg train``'s options. Most set one setting each: ``SETTING_OF`` says which, so the flags and the
settings they override are listed once; the rest (--image-size, --size-schedule, --no-cbam, --no-augment,
--name, --resume, --download, --config) are read by hand. Registered on the app by cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .common import CONFIG, on_off, print_lines, run_command
from ..base.console import info
from ..config.settings import AUTO_WORKERS, DEFAULTS
from ..machine.compile import BACKGROUND_WAIT_SHARE

D, T = DEFAULTS, DEFAULTS.train


def by_recipe(section: str, key: str) -> str:
    """A recipe knob's default for --help: the default recipe's value, and the seed recipe's."""
    from ..config.recipes import SEED, recipe_table

    value = getattr(getattr(DEFAULTS, section), key)
    return f"default: {value}; --recipe seed: {recipe_table(SEED)[section][key]}"


def option(flags: list[str], help: str, metavar: str | None = None) -> Any:
    return typer.Option(None, *flags, help=help, metavar=metavar)


MODEL = option(["--model", "-m"], f"Model: unet or resnet34-unet (default: {D.model.name}).")
EPOCHS = option(["--epochs", "-e"], f"Epochs to train; with --time, the most (default: {T.epochs}).")
TIME = option(["--time"], "A time budget: 90s, 20m, 1.5h; the run ends within it, and the cosine or onecycle schedule "
              "ends when it does (the epochs that fit are estimated, and re-planned after every epoch); \"\" or 0 = none "
              f"(default: {T.time or 'none'}).", "DURATION")
BATCH = option(["--batch-size", "-b"], f"Images per batch (default: {T.batch_size}).")
RECIPE = option(["--recipe"], "Where the knobs below start: default (the best measured) or seed (the reference "
                f"report's: Adam 1e-4, cross-entropy, plateau) (default: {T.recipe}).")
LR = option(["--learning-rate", "-lr"], f"Peak learning rate ({by_recipe('train', 'learning_rate')}).")
LOSS = option(["--loss"], "ce (cross-entropy), dice (soft Dice per image), ce+dice, lovasz (Lovász hinge per image) or "
              f"ce+lovasz; each term's weight: [train] ce_weight, dice_weight, lovasz_weight ({by_recipe('train', 'loss')}).")
OPTIMIZER = option(["--optimizer"], "adam, adamw or schedulefree-adamw (Schedule-Free AdamW, with --scheduler constant; "
                   f"pip install \"petseg[recipes]\") ({by_recipe('train', 'optimizer')}).")
DECAY = option(["--weight-decay"], f"Weight decay (L2 for adam, decoupled for adamw) ({by_recipe('train', 'weight_decay')}).")
SCHEDULER = option(["--scheduler"], "plateau (cut on a val Dice plateau, per epoch), cosine, onecycle or constant (the "
                   "warm-up, then the peak rate) (per batch) "
                   f"({by_recipe('train', 'scheduler')}).")
WARMUP = option(["--warmup-epochs"], f"Epochs of rising learning rate for cosine, onecycle and constant ({by_recipe('train', 'warmup_epochs')}).")
EMA = option(["--ema"], "Validate and save an exponential moving average of the weights with this decay per step "
             f"(warming up over the first steps); 0 = off ({by_recipe('train', 'ema')}).", "DECAY")
AFFINE = option(["--affine"], f"Probability of a random scale/shift/rotation ({by_recipe('augment', 'affine')}).", "P")
CROP = option(["--random-resized-crop"], f"Probability of a random crop resized back to full size ({by_recipe('augment', 'random_resized_crop')}).", "P")
JITTER = option(["--color-jitter"], f"Probability of random brightness/contrast/saturation/hue ({by_recipe('augment', 'color_jitter')}).", "P")
ENCODER = option(["--encoder-weights"], "resnet34-unet's encoder starts from: none (random), imagenet (torchvision's ResNet34, "
                 f"downloaded once into the torch hub cache) or a torchvision ResNet34 state dict file (default: {D.model.encoder_weights}).",
                 "none|imagenet|PATH")
FREEZE = option(["--freeze-encoder-epochs"], f"Train only the decoder for the first N epochs (default: {T.freeze_encoder_epochs}).", "N")
DATA_DIR = option(["--data-dir"], f"Dataset directory (default: {D.data.data_dir}).")
SIZE = option(["--image-size"], "Train at this square size, a multiple of 32, or grow to it: START:END (128:256: 128 for the "
              f"first half of the epochs, 192 from 50%, 256 for the last 30%; validation at END) (default: {D.data.image_size}).",
              "SIZE|START:END")
SIZE_SCHEDULE = option(["--size-schedule"], "Progressive resizing by hand: SIZE@FRACTION of the epochs, e.g. 128@0,192@0.4,256@0.7 "
                       "(the last size is the run's image size; validation at it).", "SCHEDULE")
FRACTION = option(["--fraction"], f"Train on this fraction of the train split, drawn with the seed; val shrinks alike (default: {D.data.fraction}).", "F")
LIMIT = option(["--limit"], "Train on at most N train images (val shrinks alike); 0: no limit (default: no limit).", "N")
KEEP = option(["--keep-optimizer/--drop-optimizer"], "Keep the optimiser state in last.pth once the run finishes, so that it "
              f"can be resumed; dropping it makes last.pth about a third of the size (default: {'keep' if T.keep_optimizer else 'drop'}).")
RUNS_DIR = option(["--runs-dir"], f"Where run directories go (default: {T.runs_dir}).")
DEVICE = option(["--device"], f"auto, cpu, cuda or cuda:N (default: {T.device}).")
WORKERS = option(["--workers"], f"DataLoader worker processes; {AUTO_WORKERS} = chosen from the machine's cores and device (default: {T.workers}).")
PRECISION = option(["--precision"], "auto, fp32, bf16 or fp16; auto = the faster of fp32 and bf16 as measured on this machine "
                   f"for this model and size (fp16 on GPUs without bf16) (default: {T.precision}).")
CHANNELS_LAST = option(["--channels-last/--no-channels-last"], "NHWC (channels-last: each pixel's channels side by side) memory format for model and batches; auto = on GPUs and with "
                       f"bf16, off for fp32 on a CPU (default: {on_off(T.channels_last)}).")
COMPILE = option(["--compile/--no-compile"], "torch.compile the model; auto = on CUDA GPUs and on CPUs with AMX (Intel's matrix units for bf16) "
                 "when the run is long enough to repay compiling, off for fp32 on a CPU; with --time it compiles beside the steps, "
                 f"which wait for it at most {BACKGROUND_WAIT_SHARE:.0%} of the budget, then run eagerly until it is done "
                 f"(default: {on_off(T.compile)}).")
CACHE = option(["--cache/--no-cache"], f"Decode the dataset once into a memory-mapped cache (default: {on_off(D.data.cache)}).")
SEED = option(["--seed"], f"Random seed (weights, order, augmentation) (default: {T.seed}).")
PATIENCE = option(["--patience"], "Stop after this many epochs without a better val Dice; 0 = off (it would cut a cosine or "
                  f"onecycle schedule that is still annealing) ({by_recipe('train', 'patience')}).", "N")
NAME = option(["--name"], "Run name, one path component (default: <model>-bs<batch>, then -2, -3 …).")
LOGGER = typer.Option(None, "--logger", metavar="tensorboard|mlflow", help=(
    "Log each epoch to an experiment tracker, repeatable: tensorboard (event files in the run directory) or mlflow "
    "(MLFLOW_TRACKING_URI, else sqlite:///<runs-dir>/mlflow.db); each needs its extra, e.g. pip install \"petseg[tensorboard]\" "
    f"(default: {', '.join(T.loggers) or 'none'})."))
RESUME = option(["--resume"], "Continue this run directory from its last finished epoch (its settings, then these flags).")
IF_EXISTS = typer.Option(False, "--resume-if-exists", help="With --name: resume runs/<name> when it exists (as --resume "
                         "does), leave it when it already finished, start it otherwise; for jobs that restart (torchrun --max-restarts).")

# Each parameter of ``train`` that sets one setting as given -> (section, key).
SETTING_OF = {
    "model": ("model", "name"), "encoder_weights": ("model", "encoder_weights"),
    "data_dir": ("data", "data_dir"), "cache": ("data", "cache"),
    "fraction": ("data", "fraction"), "limit": ("data", "limit"),
    "affine": ("augment", "affine"), "random_resized_crop": ("augment", "random_resized_crop"),
    "color_jitter": ("augment", "color_jitter"),
    **{key: ("train", key) for key in (
        "epochs", "batch_size", "recipe", "learning_rate", "loss", "optimizer", "weight_decay", "scheduler",
        "warmup_epochs", "ema", "freeze_encoder_epochs", "runs_dir", "device", "workers", "precision",
        "channels_last", "seed", "patience", "keep_optimizer",
    )},
    "time_budget": ("train", "time"),
    "compile_model": ("train", "compile"),
    "logger": ("train", "loggers"),
}
# Settings whose flag is not --<key with dashes>, for messages that name the flag.
FLAG_NAMES = {("train", "loggers"): "--logger", ("model", "name"): "--model", ("model", "cbam"): "--no-cbam", ("augment", "enabled"): "--no-augment"}


def overrides_of(given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The flags' settings table: None where a flag was not given."""
    table: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "augment": {}, "train": {}}
    for parameter, (section, key) in SETTING_OF.items():
        value = given[parameter]
        if isinstance(value, (list, tuple)):  # a repeatable flag: not given when empty
            value = list(value) or None
        table[section][key] = str(value) if isinstance(value, Path) else value
    table["model"]["cbam"] = False if given["no_cbam"] else None
    table["augment"]["enabled"] = False if given["no_augment"] else None
    return table


def size_overrides(image_size: str | None, size_schedule: str | None) -> dict[str, Any]:
    """--image-size (SIZE or START:END) and --size-schedule as data settings: a plain size trains at it
    (no schedule); a schedule sets the size to its last one (validation.py)."""
    from ..base.errors import UsageError
    from ..models.size_schedule import parse_size_schedule, wrong

    if image_size is not None and size_schedule is not None:
        raise UsageError("give --image-size or --size-schedule, not both (a schedule's last size is the run's image size)")
    if size_schedule is not None:
        parse_size_schedule(size_schedule)
        return {"size_schedule": size_schedule}
    if image_size is None:
        return {}
    if ":" in image_size:
        parse_size_schedule(image_size, "--image-size")
        return {"size_schedule": image_size}
    if not image_size.strip().isdigit():
        raise wrong("--image-size", image_size)
    return {"image_size": int(image_size), "size_schedule": ""}


def train(
    model: Optional[str] = MODEL, epochs: Optional[int] = EPOCHS, time_budget: Optional[str] = TIME, batch_size: Optional[int] = BATCH,
    recipe: Optional[str] = RECIPE, learning_rate: Optional[float] = LR, loss: Optional[str] = LOSS,
    optimizer: Optional[str] = OPTIMIZER, weight_decay: Optional[float] = DECAY, scheduler: Optional[str] = SCHEDULER,
    warmup_epochs: Optional[int] = WARMUP, ema: Optional[float] = EMA, affine: Optional[float] = AFFINE,
    random_resized_crop: Optional[float] = CROP, color_jitter: Optional[float] = JITTER,
    encoder_weights: Optional[str] = ENCODER, freeze_encoder_epochs: Optional[int] = FREEZE,
    data_dir: Optional[Path] = DATA_DIR, image_size: Optional[str] = SIZE, size_schedule: Optional[str] = SIZE_SCHEDULE,
    fraction: Optional[float] = FRACTION,
    limit: Optional[int] = LIMIT, keep_optimizer: Optional[bool] = KEEP,
    no_cbam: bool = typer.Option(False, "--no-cbam", help="resnet34-unet without CBAM (Convolutional Block Attention Module: channel and spatial attention) in the decoder."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Train without data augmentation."),
    name: Optional[str] = NAME, runs_dir: Optional[Path] = RUNS_DIR, device: Optional[str] = DEVICE,
    workers: Optional[int] = WORKERS, precision: Optional[str] = PRECISION, channels_last: Optional[bool] = CHANNELS_LAST,
    compile_model: Optional[bool] = COMPILE, cache: Optional[bool] = CACHE, seed: Optional[int] = SEED,
    patience: Optional[int] = PATIENCE, logger: Optional[list[str]] = LOGGER, resume: Optional[Path] = RESUME,
    resume_if_exists: bool = IF_EXISTS,
    download_data: bool = typer.Option(False, "--download", help="When the dataset is missing, download it first (as petseg download does)."),
    remeasure: bool = typer.Option(False, "--remeasure", help="--precision auto measures this machine again instead of "
                                   "using its cached verdict (petseg machine shows what is cached)."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Train a model into a new run directory under runs/.

    Under torchrun (torchrun --nproc_per_node N -m petseg_cli train ...) N processes train together.
    """
    overrides = overrides_of(locals())

    def go():
        if resume is not None:  # a run another process trains now fails here, before torch is imported
            from ..run import check_not_training

            check_not_training(resume)
        from ..train import train as train_model
        from ..train import train_settings

        if resume_if_exists and (name is None or resume is not None):
            from ..base.errors import UsageError

            raise UsageError("--resume-if-exists needs --name (the run to resume or start) and no --resume")
        overrides["data"].update(size_overrides(image_size, size_schedule))
        settings = train_settings(config, overrides, name=name, resume=resume, flag_names=FLAG_NAMES)
        resumed = None
        if resume_if_exists:
            resumed = lambda run_dir: train_settings(None, overrides, resume=run_dir, flag_names=FLAG_NAMES)  # noqa: E731
        if download_data:
            from ..data.download import download_if_missing
            from ..run.trackers import check_installed
            from ..train.validation import validate_settings

            check_installed(validate_settings(settings).train.loggers)  # a bad flag fails before a long download
            fetched = download_if_missing(settings)
            print_lines(fetched.report() if fetched else [])
        return train_model(settings, name=name, resume=resume, resume_if_exists=resumed, remeasure=remeasure)

    result = run_command(go)
    for line in train_ending(result):
        info(line)
    raise typer.Exit(result.exit_code)


def train_ending(result) -> list[str]:
    """The lines that close a training: how it ended, and what the run keeps."""
    run_dir = result.run_dir
    if result.stop_reason == "already_finished":
        return [result.note]
    if result.stop_reason == "interrupted":
        if result.saved_epoch:
            return [f"interrupted: the run keeps epoch {result.saved_epoch}; continue with  petseg train --resume {run_dir}"]
        return [f"interrupted before the first epoch finished: no weights kept; start it over with  petseg train --resume {run_dir}"]
    best = f"{result.best_val_dice:.4f} at epoch {result.best_epoch}" if result.best_epoch else "none"
    weights = " (EMA weights in best.pth and last.pth)" if result.weights == "ema" else ""
    lines = [f"{result.stop_reason}: best val_dice {best}{weights}; run saved in {run_dir}"]
    if not result.optimizer_kept:
        lines.append("last.pth now holds the weights only (no optimiser state): the run cannot be resumed (--keep-optimizer keeps it)")
    return lines
