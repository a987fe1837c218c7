"""Training curves as a picture: validation Dice and training loss per epoch, one line per run.

matplotlib is imported here only, when a plot is asked for, and only through its object-oriented API
(``Figure``, no pyplot): nothing opens a window and no global backend is switched.
"""

from __future__ import annotations

from pathlib import Path

from ..base import files
from ..base.errors import PetsegError, UsageError
from .stats import RunStats

PANELS = (("val_dice", "validation Dice"), ("train_loss", "training loss"))
DICE_KEYS = ("val_dice",)
DICE_RANGE = (0.0, 1.0)
FIGURE_SIZE = (11.0, 4.2)  # inches
DPI = 120


def legend_labels(run_stats: list[RunStats], names: list[str] | None = None) -> list[str]:
    """One label per run, never the same twice: its name (or the name given, with enough of the path
    to tell runs of the same name apart) and its image size; a number where even these are the same."""
    names = names or [stats.name for stats in run_stats]
    labels = [f"{name} ({stats.settings.data.image_size}px)" for name, stats in zip(names, run_stats)]
    for label in set(labels):
        same = [i for i, x in enumerate(labels) if x == label]
        if len(same) > 1:
            for n, i in enumerate(same, start=1):
                labels[i] = f"{label} #{n}"
    return labels


def plot_curves(run_stats: list[RunStats], path: Path, names: list[str] | None = None) -> Path:
    """Draw the two panels for every run with a finished epoch into ``path`` (written atomically).
    ``names``: the runs' names as the table shows them (see ``compare.run_labels``)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labelled = [(stats, label) for stats, label in zip(run_stats, legend_labels(run_stats, names)) if stats.epochs]
    drawn = [stats for stats, _ in labelled]
    if not drawn:
        raise PetsegError("nothing to plot: no run has a finished epoch yet")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {path.parent} does not exist")
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    file_format, known = path.suffix.lstrip(".").lower(), figure.canvas.get_supported_filetypes()
    if file_format not in known:
        raise UsageError(f"cannot write {path}: name a .png file (or one of .{', .'.join(sorted(known))})")
    for axes, (key, title) in zip(figure.subplots(1, len(PANELS)), PANELS):
        for stats, label in labelled:
            axes.plot(stats.series("epoch"), stats.series(key), marker=".", label=label)
        axes.set(title=f"{title} per epoch", xlabel="epoch", ylabel=title)
        if key in DICE_KEYS:
            axes.set_ylim(*DICE_RANGE)  # a Dice is in [0, 1]: a flat or tiny range would be blown up to fill the panel
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()  # one entry per run (the panels share them)
    figure.legend(handles, labels, loc="outside right upper", title="run")
    with files.atomic_writer(path) as f:
        figure.savefig(f, format=file_format, dpi=DPI)
    return path
