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
from typing import Any, Mapping, get_args, get_origin, get_type_hints

from ..base.errors import UsageError, malformed

CONFIG_FILENAME = "petseg.toml"
AUTO = "auto"  # device, precision, channels_last, compile: chosen from the machine when the run starts
PRECISIONS = (AUTO, "fp32", "bf16", "fp16")
RUNTIMES = (AUTO, "onnxruntime", "openvino")  # what runs an exported .onnx file (runtime_probe decides auto)
WEIGHTS = ("best", "last")  # a run's best.pth or last.pth (run.layout.WEIGHTS names the files)
AUTO_WORKERS = -1  # train.workers: chosen from the machine (cores, device)
# Environment variables that override petseg.toml (flags override them): {section: {key: variable}}.
ENVIRONMENT = {"download": {"mirror": "PETSEG_MIRROR"}, "train": {"precision": "PETSEG_PRECISION"}}


@dataclass
class DataSettings:
    data_dir: str = "data/oxford-iiit-pet"
    image_size: int = 256
    # Progressive resizing (models/size_schedule.py): "" none, "128:256", or "128@0,192@0.4,256@0.7"; its last size is image_size.
    size_schedule: str = ""
    cache: bool = True
    fraction: float = 1.0  # of the train split a run uses (val shrinks in proportion)
    limit: int = 0  # at most this many train images; 0: no limit
    # Input normalisation (a name in data.transforms.NORMALIZATIONS); runs recorded before it existed used imagenet.
    normalization: str = "imagenet"
    train_on_val: bool = False  # train on the train and val splits together (a final refit; val then chooses nothing)


@dataclass
class ModelSettings:
    name: str = "resnet34-unet"
    cbam: bool = True
    encoder_weights: str = "none"  # none, imagenet or the path of a torchvision ResNet34 state dict


@dataclass
class AugmentSettings:
    enabled: bool = True
    horizontal_flip: float = 0.5
    random_rotate90: float = 0.5
    grid_distortion: float = 0.5
    brightness_contrast: float = 0.2
    affine: float = 0.0
    random_resized_crop: float = 0.0
    color_jitter: float = 0.0
    # Between training photos (data.transforms.Mixing): a box of another photo (CutMix), its pet (copy-paste).
    cutmix: float = 0.0
    copy_paste: float = 0.0


@dataclass
class TrainSettings:
    epochs: int = 50
    time: str | float = ""  # a time budget (90s, 20m, 1.5h): --epochs is then a maximum; "" or 0 = none
    batch_size: int = 8
    # The recipe the knobs below start from (recipes.RECIPES); the defaults written here are "default"'s.
    recipe: str = "default"
    learning_rate: float = 1e-3
    loss: str = "ce+dice"
    # Each term's weight in the loss (losses.WEIGHT_OF), and the cross-entropy's label smoothing: 1, 1, 1, 0 is the plain sum.
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    lovasz_weight: float = 1.0
    label_smoothing: float = 0.0
    sam_rho: float = 0.0  # SAM's neighbourhood radius (optim.sharpness_aware); 0: off
    sam_every: int = 2  # SAM on every N-th step
    optimizer: str = "schedulefree-adamw"
    weight_decay: float = 1e-4
    scheduler: str = "constant"
    warmup_epochs: int = 1
    ema: float = 0.0
    freeze_encoder_epochs: int = 0
    seed: int = 0
    patience: int = 0  # early stopping after this many epochs without a better val Dice; 0 = off
    lr_patience: int = 2
    lr_factor: float = 0.5
    device: str = AUTO
    workers: int = AUTO_WORKERS
    precision: str = AUTO
    channels_last: bool | str = AUTO  # true, false or "auto"
    compile: bool | str = AUTO  # true, false or "auto"
    runs_dir: str = "runs"
    keep_optimizer: bool = False  # keep the optimiser state in last.pth once the run has finished
    loggers: list[str] = field(default_factory=list)  # experiment trackers: tensorboard, mlflow (trackers.LOGGERS)


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
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    device: str = AUTO
    max_image_mb: float = 20.0
    max_pixels: int = 16_000_000
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    weights: str = WEIGHTS[0]  # a run's best.pth or last.pth (an exported file holds its own)
    tta: bool = False  # average each image's and its horizontal flip's softmax
    max_in_flight: int = 16
    max_decodes: int = 2
    max_uploads: int = 32  # uploads being received at once (not yet counted in max_in_flight)
    upload_timeout: float = 30.0  # seconds for a request's upload to arrive whole; then 408
    allowed_hosts: list[str] = field(default_factory=list)
    runtime: str = RUNTIMES[1]  # what runs an exported .onnx file: onnxruntime, openvino or auto (the faster, measured)


@dataclass
class Settings:
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    download: DownloadSettings = field(default_factory=DownloadSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


DEFAULTS = Settings()


def _check_type(where: str, value: Any, expected: Any) -> Any:
    if get_origin(expected) is list:  # a list of one type (serve.allowed_hosts)
        (item,) = get_args(expected)
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise UsageError(f"{where} must be a list of {item.__name__}, got {value!r}")
        return list(value)
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


# Settings that name a path: a relative one in a config file is relative to that file's directory.
PATH_KEYS = {"data": ("data_dir",), "train": ("runs_dir",)}


def relative_to_file(table: dict[str, Any], path: Path, cwd: Path | None = None) -> dict[str, Any]:
    """``table`` with its relative ``PATH_KEYS`` taken relative to the directory of ``path`` (the config
    file), as absolute paths when that is not the current directory."""
    base = Path(os.path.abspath(path.parent))  # "../project" made absolute, links kept as named
    if base == Path(os.path.abspath(cwd or Path.cwd())):
        return table  # the same place either way: keep them as written
    resolved = {section: dict(values) if isinstance(values, dict) else values for section, values in table.items()}
    for section, keys in PATH_KEYS.items():
        values = resolved.get(section)
        for key in keys:
            if isinstance(values, dict) and isinstance(values.get(key), str) and not Path(values[key]).expanduser().is_absolute():
                values[key] = str(base / values[key])
    return resolved


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


def _recipe_name(*tables: dict[str, Any]) -> str:
    """The recipe the first table that names one asks for (flags, then petseg.toml), else the default."""
    for table in tables:
        train = table.get("train")
        if isinstance(train, dict) and train.get("recipe") is not None:
            return train["recipe"]
    return DEFAULTS.train.recipe


def _model_name(*tables: dict[str, Any]) -> str:
    """The model the first table that names one asks for (flags, then petseg.toml), else the default."""
    for table in tables:
        model = table.get("model")
        if isinstance(model, dict) and model.get("name") is not None:
            return model["name"]
    return DEFAULTS.model.name


def recipe_settings(name: Any, origin: str, model: str | None = None) -> Settings:
    """The built-in defaults with recipe ``name`` applied, as it is for ``model``."""
    from .recipes import recipe_table

    try:
        table = recipe_table(name, model)
    except (ValueError, TypeError):
        from .recipes import RECIPES

        raise UsageError(f"{origin}: unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None
    settings = apply_table(Settings(), table, f"recipe {name}")
    settings.train.recipe = name
    return settings


def load_settings(
    config: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Built-in defaults < the recipe < petseg.toml (``config`` or the current directory's) < environment
    < ``overrides``. The recipe is the one the flags name, else petseg.toml's ``[train] recipe``, else
    ``default``.

    ``overrides`` is ``{section: {key: value}}``; a value of None means "not given on the command line".
    With ``base`` (a run's own settings, when resuming) petseg.toml is not read and no recipe is applied:
    base < environment < overrides (a run keeps its recipe).
    """
    given = {
        section: {k: v for k, v in values.items() if v is not None}
        for section, values in (overrides or {}).items()
    }
    if base is not None:
        asked = given.get("train", {}).get("recipe")
        if asked is not None and asked != base.train.recipe:
            raise UsageError(f"--recipe cannot change when resuming: this run was trained with recipe {base.train.recipe!r}")
        settings = base
    else:
        path = find_config(config)
        table = relative_to_file(read_toml(path), path) if path is not None else {}
        origin = "command line" if "recipe" in given.get("train", {}) else str(path)
        settings = recipe_settings(_recipe_name(given, table), origin, _model_name(given, table))
        if path is not None:
            apply_table(settings, table, str(path))
    apply_table(settings, environment_table(), "environment")
    return apply_table(settings, given, "command line")


def settings_from_dict(table: dict[str, Any], origin: str) -> Settings:
    """Rebuild settings from a run's config.toml (sections other than settings are ignored).

    A key the run does not record takes the value petseg used before that key existed: runs written
    before recipes trained with the seed recipe (and ImageNet normalisation, no pretrained encoder)."""
    from .recipes import SEED

    known = {f.name for f in fields(Settings)}
    return apply_table(recipe_settings(SEED, origin), {k: v for k, v in table.items() if k in known}, origin)


def require(ok: bool, message: str) -> None:
    """A usage error with ``message`` unless ``ok``: the one way every setting and option is checked."""
    if not ok:
        raise UsageError(message)


def check_at_least(option: str, value: int | float, minimum: int | float) -> None:
    require(value >= minimum, f"{option} must be at least {minimum}, got {value}")


def check_duration(option: str, value: str) -> None:
    from ..base.formatting import DURATION_EXAMPLE, DURATION_FORM, parse_duration

    try:
        parse_duration(value)
    except ValueError:
        raise malformed(option, DURATION_FORM, DURATION_EXAMPLE, value) from None


def check_batch_size(value: int, option: str = "--batch-size") -> None:
    check_at_least(option, value, 1)


def check_threshold(value: float, option: str = "--threshold") -> None:
    require(0.0 < value < 1.0, f"{option} must be a probability between 0 and 1 (exclusive), got {value}")


def check_probability(option: str, value: float) -> None:
    require(0.0 <= value <= 1.0, f"{option} must be a probability in [0, 1], got {value}")


def check_choice(option: str, value: Any, choices: tuple[Any, ...]) -> None:
    shown = ", ".join(str(c) for c in choices)
    require(value in choices, f"{option} must be one of {shown}, got {value!r}")


def validate(settings: Settings) -> Settings:
    """Reject values no command can use, with the option (or petseg.toml key) to fix in the message.
    The names that components own (model, loss, optimiser, schedule, normalisation) are theirs to check:
    ``validation.validate_settings`` runs this and them, once, before any work starts."""
    t, d, a = settings.train, settings.data, settings.augment
    check_at_least("--epochs", t.epochs, 1)
    check_duration("--time", t.time)
    require(0.0 < d.fraction <= 1.0, f"--fraction must be more than 0 and at most 1, got {d.fraction}")
    require(d.limit >= 0, f"--limit must be 0 (no limit) or more, got {d.limit}")
    check_batch_size(t.batch_size)
    require(t.learning_rate > 0, f"--learning-rate must be positive, got {t.learning_rate}")
    require(t.patience >= 0, f"--patience must be 0 (off) or more, got {t.patience}")
    check_at_least("train.lr_patience", t.lr_patience, 0)
    require(0.0 < t.lr_factor < 1.0, f"train.lr_factor must be between 0 and 1 (exclusive), got {t.lr_factor}")
    require(t.workers >= AUTO_WORKERS, f"--workers must be 0 or more ({AUTO_WORKERS}: auto), got {t.workers}")
    check_choice("--precision", t.precision, PRECISIONS)
    require(
        t.channels_last in (True, False, AUTO),
        f'train.channels_last must be true, false or "auto", got {t.channels_last!r}',
    )
    check_choice("train.compile", t.compile, (True, False, AUTO))
    for f in fields(AugmentSettings):
        if f.type in (float, "float"):
            check_probability(f"augment.{f.name}", getattr(a, f.name))
    validate_download(settings.download)
    validate_serve(settings.serve)
    check_recipe(settings)
    return settings


def validate_download(download: DownloadSettings) -> DownloadSettings:
    """The network settings, checked the same way by every command and by every download (the dataset's,
    the encoder's weights)."""
    check_at_least("download.retries", download.retries, 0)
    require(download.retry_delay >= 0, f"download.retry_delay must be 0 or more, got {download.retry_delay}")
    for key in ("connect_timeout", "read_timeout"):
        require(getattr(download, key) > 0, f"download.{key} must be positive, got {getattr(download, key)}")
    return download


MAX_PORT = 65535


def validate_serve(serve: ServeSettings) -> ServeSettings:
    """Reject serve settings no server can use, naming the option to fix."""
    require(bool(serve.host.strip()), "--host must not be empty")
    require(0 <= serve.port <= MAX_PORT, f"--port must be between 0 and {MAX_PORT} (0: any free port), got {serve.port}")
    check_at_least("--workers", serve.workers, 1)
    require(serve.max_image_mb > 0, f"--max-image-mb must be positive, got {serve.max_image_mb}")
    check_at_least("--max-pixels", serve.max_pixels, 1)
    check_batch_size(serve.max_batch, "--max-batch")
    require(serve.batch_wait_ms >= 0, f"--batch-wait-ms must be 0 or more, got {serve.batch_wait_ms}")
    check_choice("--weights", serve.weights, WEIGHTS)
    check_choice("--runtime", serve.runtime, RUNTIMES)
    check_at_least("--max-decodes", serve.max_decodes, 1)
    check_at_least("--max-uploads", serve.max_uploads, 1)
    require(serve.upload_timeout > 0, f"--upload-timeout must be positive, got {serve.upload_timeout}")
    require(
        serve.max_in_flight >= max(serve.max_batch, serve.max_decodes),
        f"--max-in-flight must be at least --max-batch ({serve.max_batch}) and --max-decodes "
        f"({serve.max_decodes}), got {serve.max_in_flight}",
    )
    for host in serve.allowed_hosts:
        wildcard = host == "*" or (host.startswith("*.") and "*" not in host[2:])
        require(
            bool(host) and ("*" not in host or wildcard) and not any(c.isspace() or c in "/@" for c in host),
            f"serve.allowed_hosts: {host!r} is not a host name (or *, or *.example.com)",
        )
    return serve


def check_recipe(settings: Settings) -> None:
    """The recipe's numeric knobs (its names are checked by the components that own them)."""
    from .recipes import RECIPES

    t = settings.train
    check_choice("--recipe", t.recipe, tuple(RECIPES))
    check_at_least("--weight-decay", t.weight_decay, 0)
    check_at_least("--warmup-epochs", t.warmup_epochs, 0)
    require(0.0 <= t.ema < 1.0, f"--ema must be in [0, 1) (0: off), got {t.ema}")
    check_at_least("--freeze-encoder-epochs", t.freeze_encoder_epochs, 0)
