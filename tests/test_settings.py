import re
import tomllib
from pathlib import Path

import pytest

from petseg_cli.base.errors import UsageError
from petseg_cli.config.settings import DEFAULTS, load_settings
from petseg_cli.train.validation import validate_settings as validate

REPO = Path(__file__).resolve().parents[1]


def test_repository_petseg_toml_matches_the_built_in_defaults():
    from petseg_cli.config.recipes import KNOBS

    text = (REPO / "petseg.toml").read_text()
    # The recipe's knobs are written as comments ("# key = value"), so that [train] recipe decides them.
    assert tomllib.loads(re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)) == DEFAULTS.to_dict()
    active = tomllib.loads(text)
    for section, keys in KNOBS.items():
        assert not set(keys) & set(active[section]), section


def test_precedence_defaults_then_file_then_flags(tmp_path, monkeypatch):
    (tmp_path / "petseg.toml").write_text("[train]\nepochs = 7\nbatch_size = 3\n[model]\nname = 'unet'\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(overrides={"train": {"batch_size": 12, "epochs": None}})
    assert settings.train.epochs == 7  # from the file
    assert settings.train.batch_size == 12  # the flag wins
    assert settings.model.name == "unet"
    from petseg_cli.config.recipes import recipe_table

    # not set anywhere: the default recipe's value for the file's model (for unet, the seed's)
    expected = recipe_table("default", "unet").get("train", {}).get("learning_rate", DEFAULTS.train.learning_rate)
    assert settings.train.learning_rate == expected


def test_petseg_precision_overrides_the_file_and_a_flag_overrides_it(tmp_path, monkeypatch):
    (tmp_path / "petseg.toml").write_text("[train]\nprecision = 'bf16'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETSEG_PRECISION", "fp32")
    assert load_settings().train.precision == "fp32"
    assert load_settings(overrides={"train": {"precision": "auto"}}).train.precision == "auto"
    monkeypatch.setenv("PETSEG_PRECISION", "")  # empty: sets nothing
    assert load_settings().train.precision == "bf16"


def test_explicit_config_is_used_instead_of_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "petseg.toml").write_text("[train]\nepochs = 7\n")
    other = tmp_path / "other.toml"
    other.write_text("[train]\nepochs = 9\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(other).train.epochs == 9


def test_unknown_key_is_an_error_naming_it(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nepoch = 3\n")
    with pytest.raises(UsageError, match="unknown key 'epoch' in \\[train\\]"):
        load_settings(tmp_path / "c.toml")


def test_wrong_type_is_an_error(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nbatch_size = 'eight'\n")
    with pytest.raises(UsageError, match="train.batch_size must be int"):
        load_settings(tmp_path / "c.toml")


def test_syntax_error_gives_the_line(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nepochs = 3\nbatch_size = = 2\n")
    with pytest.raises(UsageError, match="line 3"):
        load_settings(tmp_path / "c.toml")


def test_integer_accepted_for_float_setting(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nlearning_rate = 1\n")
    assert load_settings(tmp_path / "c.toml").train.learning_rate == 1.0


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "epochs", 0, "--epochs must be at least 1"),
        ("train", "batch_size", -3, "--batch-size must be at least 1"),
        ("train", "learning_rate", -1.0, "--learning-rate must be positive"),
        ("data", "image_size", 100, "multiple of 32"),
        ("model", "name", "vit", "unknown model 'vit'"),
        ("train", "lr_factor", 1.0, "train.lr_factor must be between 0 and 1"),
        ("train", "lr_factor", 0.0, "train.lr_factor must be between 0 and 1"),
        ("train", "lr_patience", -1, "train.lr_patience must be at least 0"),
        ("train", "patience", -1, "--patience must be 0 \\(off\\) or more"),
        ("augment", "horizontal_flip", 1.5, "augment.horizontal_flip must be a probability"),
        ("download", "retries", -1, "download.retries must be at least 0"),
    ],
)
def test_validation_rejects_unusable_values(section, key, value, message):
    settings = load_settings(config=None, overrides={section: {key: value}})
    with pytest.raises(UsageError, match=message):
        validate(settings)


def test_fused_adam_only_where_the_installed_torch_has_it():
    from petseg_cli.train.optim import fused_adam_supported

    assert fused_adam_supported("cpu", "2.4.0+cpu") and fused_adam_supported("cpu", "2.13.0")
    assert not fused_adam_supported("cpu", "2.3.1+cpu")  # pyproject allows it; fused CPU Adam came in 2.4
    assert fused_adam_supported("cuda", "2.3.1") and not fused_adam_supported("mps", "2.13.0")
