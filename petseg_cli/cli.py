"""The ``petseg`` command: parses options, calls one library function per subcommand, prints.

Heavy modules (torch, albumentations, matplotlib, and Rich, which Typer would use to draw the help)
are imported inside the commands, so ``petseg --help`` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import PetsegError
from .settings import DEFAULTS, load_settings

app = typer.Typer(
    help="Train, evaluate and serve pet-vs-background segmentation models on the Oxford-IIIT Pet dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: drawing it with Rich would double the start-up time
    context_settings={"help_option_names": ["-h", "--help"]},
)

CONFIG_HELP = "Project config file (default: ./petseg.toml when it exists)."


def fail(message: str, code: int = 1) -> None:
    from .console import err

    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code)


def run_command(function, *args, **kwargs):
    """Call a library function; a PetsegError becomes one line on stderr, Ctrl-C exit code 130."""
    try:
        return function(*args, **kwargs)
    except PetsegError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        from .console import err

        err.print("interrupted")
        raise typer.Exit(130)


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


def not_built(command: str) -> None:
    fail(f"`petseg {command}` is not available in this version yet")


@app.command()
def download() -> None:
    """Download, verify and extract the Oxford-IIIT Pet release (not built yet)."""
    not_built("download")


d, t = DEFAULTS, DEFAULTS.train


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


@app.command()
def train(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Model: unet or resnet34-unet (default: {d.model.name})."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help=f"Epochs to train (default: {t.epochs})."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help=f"Images per batch (default: {t.batch_size})."),
    learning_rate: Optional[float] = typer.Option(
        None, "--learning-rate", "-lr", help=f"Adam learning rate (default: {t.learning_rate})."
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=f"Dataset directory (default: {d.data.data_dir})."),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help=f"Train at this square size, a multiple of 32 (default: {d.data.image_size})."
    ),
    no_cbam: bool = typer.Option(False, "--no-cbam", help="resnet34-unet without CBAM attention in the decoder."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Train without data augmentation."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: <model>-bs<batch>, then -2, -3 …)."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help=f"Where run directories go (default: {t.runs_dir})."),
    device: Optional[str] = typer.Option(None, "--device", help=f"auto, cpu, cuda or cuda:N (default: {t.device})."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="DataLoader worker processes (default: chosen from the machine's cores and device)."
    ),
    precision: Optional[str] = typer.Option(
        None, "--precision", help=f"auto, fp32, bf16 or fp16; auto = bf16 where native, fp16 on older GPUs, else fp32 (default: {t.precision})."
    ),
    channels_last: Optional[bool] = typer.Option(
        None, "--channels-last/--no-channels-last", help=f"NHWC memory format for model and batches (default: {on_off(t.channels_last)})."
    ),
    compile_model: Optional[bool] = typer.Option(
        None, "--compile/--no-compile", help=f"torch.compile the model; the first step takes minutes (default: {on_off(t.compile)})."
    ),
    cache: Optional[bool] = typer.Option(
        None, "--cache/--no-cache", help=f"Decode the dataset once into a memory-mapped cache (default: {on_off(d.data.cache)})."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Random seed (weights, order, augmentation) (default: {t.seed})."),
    patience: Optional[int] = typer.Option(
        None, "--patience", help=f"Stop after this many epochs without a better val Dice (default: {t.patience})."
    ),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue this run directory from its last finished epoch (its settings, then these flags)."
    ),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Train a model into a new run directory under runs/.

    Under torchrun (torchrun --nproc_per_node N -m petseg_cli train ...) N processes train together.
    """
    from .allocator import reexecute_with_tcmalloc

    reexecute_with_tcmalloc()
    overrides = {
        "model": {"name": model, "cbam": False if no_cbam else None},
        "data": {"data_dir": str(data_dir) if data_dir else None, "image_size": image_size, "cache": cache},
        "augment": {"enabled": False if no_augment else None},
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "runs_dir": str(runs_dir) if runs_dir else None,
            "device": device,
            "workers": workers,
            "precision": precision,
            "channels_last": channels_last,
            "compile": compile_model,
            "seed": seed,
            "patience": patience,
        },
    }

    def go():
        from .runs import read_config
        from .train import train as train_model

        base = read_config(resume)[0] if resume else None
        settings = load_settings(config, overrides, base=base)
        return train_model(settings, name=name, resume=resume)

    result = run_command(go)
    raise typer.Exit(result.exit_code)


@app.command()
def evaluate() -> None:
    """Score runs on a split (not built yet)."""
    not_built("evaluate")


@app.command()
def infer() -> None:
    """Predict masks for images (not built yet)."""
    not_built("infer")


@app.command()
def compare() -> None:
    """Compare runs side by side (not built yet)."""
    not_built("compare")


@app.command()
def summary() -> None:
    """Lay a model or a run open (not built yet)."""
    not_built("summary")


def main() -> None:
    app(prog_name="petseg")


if __name__ == "__main__":
    sys.exit(main())
