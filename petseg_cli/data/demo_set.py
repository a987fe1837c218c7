"""The demo set: 30 photos of the release, downscaled, with their trimaps, installed with the package
(``petseg_cli/data/demo/``, its README.md credits the dataset). ``--data-dir demo`` names it wherever no
directory called ``demo`` exists, so a first run needs no download."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEMO = "demo"  # the --data-dir value (data.data_dir in petseg.toml) that names the demo set
PHOTOS = DEMO  # its folder, beside this module, has the same name


def demo_dir() -> Path:
    """Where the demo set is installed."""
    return Path(str(files(__package__) / PHOTOS))


def resolve_data_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as a path: the installed demo set when it is ``demo`` and no such directory is here."""
    path = Path(data_dir)
    if str(data_dir) == DEMO and not path.exists():
        return demo_dir()
    return path


def is_demo(data_dir: Path) -> bool:
    """Whether ``data_dir`` is the installed demo set."""
    try:
        return data_dir.resolve() == demo_dir().resolve()
    except OSError:
        return False
