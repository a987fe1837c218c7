"""``petseg summary``: a model laid open (modules, shapes, parameters, FLOPs), and for a run directory
its settings and how its training went; returns a record that cli.py prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..base.errors import PetsegError, UsageError
from ..base.formatting import DASH, duration, or_dash, sparkline
from ..models import MODELS, build_model, canonical_name, check_image_size, model_label
from ..run import CONFIG, CURVES, HISTORY, is_run
from ..run.stats import RunStats, load_run_stats
from ..config.settings import check_at_least, load_settings

if TYPE_CHECKING:
    from ..models.summary import ModelSummary

DEFAULT_DEPTH = 2


@dataclass(frozen=True)
class Target:
    """What to summarize: a model and the image size, and the run they come from, if any."""

    model: str
    cbam: bool
    image_size: int
    run: RunStats | None = None


def resolve_target(target: str, image_size: int | None, no_cbam: bool, config: Path | None) -> Target:
    """A run directory (its config.toml names model and size) or a model name (size from petseg.toml)."""
    path = Path(target)
    if path.is_dir():
        if no_cbam:
            raise UsageError("--no-cbam goes with a model name; a run's config.toml says whether it uses CBAM")
        if not is_run(path):
            raise PetsegError(f"{path} is not a petseg run (it needs {CONFIG} and {HISTORY})")
        run = load_run_stats(path)
        model, size = run.settings.model, run.settings.data.image_size if image_size is None else image_size
        return Target(canonical_name(model.name), model.cbam, size, run)
    try:
        name = canonical_name(target)
    except ValueError:
        raise UsageError(f"{target!r} is neither a model ({', '.join(MODELS)}) nor a run directory") from None
    settings = load_settings(config, {"data": {"image_size": image_size}})
    return Target(name, not no_cbam, settings.data.image_size)


def check_options(target: Target, depth: int, plot: bool) -> None:
    size = target.image_size
    check_image_size(size)
    check_at_least("--depth", depth, 1)
    if plot and target.run is None:
        raise UsageError("--plot draws a run's curves: give a run directory as TARGET")


def totals(summary: ModelSummary) -> list[tuple[str, str]]:
    size = summary.image_size
    return [
        ("parameters", f"{summary.parameters:,}"),
        ("trainable parameters", f"{summary.trainable:,}"),
        ("weights size (fp32)", f"{summary.weights_mb:.1f} MB"),
        (f"forward GFLOPs (1x{size}x{size})", f"{summary.gflops:.2f}"),
        (f"forward + backward GFLOPs (1x{size}x{size})", f"{summary.training_gflops:.2f}"),
        ("activation memory (forward)", f"{summary.activation_mb:.1f} MB"),
    ]


def training(run: RunStats) -> list[tuple[str, str]]:
    s, dice = run.settings, run.series("val_dice")
    return [
        ("run", str(run.run_dir)),
        ("model", run.model),
        ("image size", str(s.data.image_size)),
        ("batch size", str(s.train.batch_size)),
        ("learning rate", f"{s.train.learning_rate:g}"),
        ("augmentation", "on" if s.augment.enabled else "off"),
        ("seed / patience", f"{s.train.seed} / {s.train.patience}"),
        ("device", str(run.facts.get("device", DASH))),
        ("started", str(run.facts.get("start_time", DASH))),
        ("epochs", f"{len(run.epochs)}/{s.train.epochs}"),
        ("stop reason", run.stop_reason),
        ("best epoch", or_dash(run.best_epoch, str)),
        ("best val Dice", or_dash(run.best_val_dice, "{:.4f}".format)),
        ("test Dice", or_dash(run.test_dice, "{:.4f}".format)),
        ("training time", duration(run.total_seconds)),
        ("val Dice per epoch", f"{sparkline(dice)}  (min {min(dice):.4f}, max {max(dice):.4f})" if dice else DASH),
    ]


@dataclass(frozen=True)
class Summary:
    label: str  # the model as compare labels it
    image_size: int
    model: "ModelSummary"  # modules, shapes, parameters, FLOPs
    totals: list[tuple[str, str]]
    training: list[tuple[str, str]] | None  # a run's settings and training; None for a model name
    curves: Path | None  # the curves.png written with --plot


def summary(
    target: str,
    image_size: int | None = None,
    depth: int = DEFAULT_DEPTH,
    no_cbam: bool = False,
    plot: bool = False,
    config: Path | None = None,
) -> Summary:
    """The model's modules and totals (and a run's training); ``plot`` writes the run's curves.png."""
    from ..models.summary import summarize_model

    resolved = resolve_target(target, image_size, no_cbam, config)
    check_options(resolved, depth, plot)
    size = resolved.image_size
    result = summarize_model(build_model(resolved.model, cbam=resolved.cbam), size, depth)
    curves = None
    if plot:
        from ..run.plots import plot_curves

        curves = plot_curves([resolved.run], resolved.run.run_dir / CURVES)
    training_pairs = training(resolved.run) if resolved.run is not None else None
    return Summary(model_label(resolved.model, resolved.cbam), size, result, totals(result), training_pairs, curves)
