"""All of petseg's settings: one typed object, resolved as built-in defaults < petseg.toml <
environment variables (``ENVIRONMENT``) < flags.

The dataclasses below are the single source of truth for every default; ``petseg.toml`` in the
repository documents the same values, and a test checks that the two agree.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_type_hints

from .errors import UsageError

CONFIG_FILENAME = "petseg.toml"
AUTO = "auto"  # device, precision, channels_last, compile: chosen from the machine when the run starts
PRECISIONS = (AUTO, "fp32", "bf16", "fp16")
AUTO_WORKERS = -1  # train.workers: chosen from the machine (cores, device)
# Environment variables that override petseg.toml (flags override them): {section: {key: variable}}.
ENVIRONMENT = {"download": {"mirror": "PETSEG_MIRROR"}}


@dataclass
class DataSettings:
    data_dir: str = "data/oxford-iiit-pet"
    image_size: int = 256
    cache: bool = True


@dataclass
class ModelSettings:
    name: str = "resnet34-unet"
    cbam: bool = True


@dataclass
class AugmentSettings:
    enabled: bool = True
    horizontal_flip: float = 0.5
    random_rotate90: float = 0.5
    grid_distortion: float = 0.5
    brightness_contrast: float = 0.2


@dataclass
class TrainSettings:
    epochs: int = 50
    batch_size: int = 8
    learning_rate: float = 1e-4
    seed: int = 0
    patience: int = 5
    lr_patience: int = 2
    lr_factor: float = 0.5
    device: str = AUTO
    workers: int = AUTO_WORKERS
    precision: str = AUTO
    channels_last: bool | str = AUTO  # true, false or "auto"
    compile: bool | str = AUTO  # true, false or "auto"
    runs_dir: str = "runs"


@dataclass
class DownloadSettings:
    mirror: str = ""
    retries: int = 3
    retry_delay: float = 2.0
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    images_md5: str = ""
    annotations_md5: str = ""


@dataclass
class Settings:
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    download: DownloadSettings = field(default_factory=DownloadSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


DEFAULTS = Settings()


def _check_type(where: str, value: Any, expected: Any) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        name = getattr(expected, "__name__", str(expected).replace(" | ", " or "))  # bool | str has none
        raise UsageError(f"{where} must be {name}, got {type(value).__name__} {value!r}")
    return value


def apply_table(settings: Settings, table: dict[str, Any], origin: str) -> Settings:
    """Overlay a nested ``{section: {key: value}}`` table on ``settings``; unknown keys are errors."""
    for section_name, values in table.items():
        if section_name not in {f.name for f in fields(Settings)}:
            raise UsageError(f"{origin}: unknown section [{section_name}]")
        if not isinstance(values, dict):
            raise UsageError(f"{origin}: [{section_name}] must be a table")
        section = getattr(settings, section_name)
        hints = get_type_hints(type(section))
        for key, value in values.items():
            if key not in hints:
                raise UsageError(f"{origin}: unknown key '{key}' in [{section_name}]")
            setattr(section, key, _check_type(f"{origin}: {section_name}.{key}", value, hints[key]))
    return settings


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:  # the message carries "(at line N, column M)"
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def find_config(explicit: Path | None, cwd: Path | None = None) -> Path | None:
    """``--config`` when given (it must exist), else ``petseg.toml`` in the current directory if any."""
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"config file {explicit} does not exist")
        return explicit
    candidate = (cwd or Path.cwd()) / CONFIG_FILENAME
    return candidate if candidate.is_file() else None


def environment_table(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """The settings that ``ENVIRONMENT``'s variables set (an empty variable sets nothing)."""
    environ = os.environ if environ is None else environ
    return {
        section: {key: environ[name] for key, name in keys.items() if environ.get(name)}
        for section, keys in ENVIRONMENT.items()
    }


def load_settings(
    config: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Built-in defaults < petseg.toml (``config`` or the current directory's) < environment < ``overrides``.

    ``overrides`` is ``{section: {key: value}}``; a value of None means "not given on the command line".
    With ``base`` (a run's own settings, when resuming) petseg.toml is not read: base < environment < overrides.
    """
    settings = base if base is not None else Settings()
    path = find_config(config) if base is None else None
    if path is not None:
        apply_table(settings, read_toml(path), str(path))
    apply_table(settings, environment_table(), "environment")
    given = {
        section: {k: v for k, v in values.items() if v is not None}
        for section, values in (overrides or {}).items()
    }
    return apply_table(settings, given, "command line")


def settings_from_dict(table: dict[str, Any], origin: str) -> Settings:
    """Rebuild settings from a run's config.toml (sections other than settings are ignored)."""
    known = {f.name for f in fields(Settings)}
    return apply_table(Settings(), {k: v for k, v in table.items() if k in known}, origin)


def validate(settings: Settings) -> Settings:
    """Reject values no command can use, with the option to fix in the message."""
    from .models import SIZE_MULTIPLE, canonical_name

    t, d = settings.train, settings.data
    try:
        settings.model.name = canonical_name(settings.model.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    checks = [
        (t.epochs >= 1, f"--epochs must be at least 1, got {t.epochs}"),
        (t.batch_size >= 1, f"--batch-size must be at least 1, got {t.batch_size}"),
        (t.learning_rate > 0, f"--learning-rate must be positive, got {t.learning_rate}"),
        (t.patience >= 1, f"--patience must be at least 1, got {t.patience}"),
        (t.workers >= AUTO_WORKERS, f"--workers must be 0 or more ({AUTO_WORKERS}: auto), got {t.workers}"),
        (t.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}"),
        (t.channels_last in (True, False, AUTO), f'train.channels_last must be true, false or "auto", got {t.channels_last!r}'),
        (t.compile in (True, False, AUTO), f'train.compile must be true, false or "auto", got {t.compile!r}'),
        (
            d.image_size >= SIZE_MULTIPLE and d.image_size % SIZE_MULTIPLE == 0,
            f"--image-size must be a positive multiple of {SIZE_MULTIPLE}, got {d.image_size}",
        ),
    ]
    checks += [
        (0.0 <= getattr(settings.augment, name) <= 1.0, f"augment.{name} must be a probability in [0, 1]")
        for name in ("horizontal_flip", "random_rotate90", "grid_distortion", "brightness_contrast")
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return settings
