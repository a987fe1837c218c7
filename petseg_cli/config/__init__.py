"""The settings (petseg.toml and its dataclasses) and the recipes; below everything but ``base``."""
