"""Training curves as a picture: validation Dice and training loss per epoch, one line per run.

matplotlib is imported here only, when a plot is asked for, and only through its object-oriented API
(``Figure``, no pyplot): nothing opens a window and no global backend is switched.
"""

from __future__ import annotations

from pathlib import Path

from . import files, runs
from .errors import PetsegError, UsageError
from .run_stats import RunStats

PANELS = (("val_dice", "validation Dice"), ("train_loss", "training loss"))
FIGURE_SIZE = (11.0, 4.2)  # inches
DPI = 120


def plot_curves(run_stats: list[RunStats], path: Path) -> Path:
    """Draw the two panels for every run with a finished epoch into ``path`` (written atomically)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    drawn = [stats for stats in run_stats if stats.epochs]
    if not drawn:
        raise PetsegError("nothing to plot: no run has a finished epoch yet")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {path.parent} does not exist")
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    file_format, known = path.suffix.lstrip(".").lower(), figure.canvas.get_supported_filetypes()
    if file_format not in known:
        raise UsageError(f"cannot write {path}: name a .png file (or one of .{', .'.join(sorted(known))})")
    for axes, (key, title) in zip(figure.subplots(1, len(PANELS)), PANELS):
        for stats in drawn:
            axes.plot(stats.series("epoch"), stats.series(key), marker=".", label=stats.name)
        axes.set(title=f"{title} per epoch", xlabel="epoch", ylabel=title)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    figure.legend(*axes.get_legend_handles_labels(), loc="outside right upper", title="run")
    with files.atomic_writer(path) as f:
        figure.savefig(f, format=file_format, dpi=DPI)
    return path
