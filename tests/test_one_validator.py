"""One check per setting: the network settings that `validate` refuses are refused, with the same words,
by the dataset download and by the encoder-weights download, before either writes anything."""

import dataclasses

import pytest

from petseg_cli.data.download import download
from petseg_cli.base.errors import UsageError
from petseg_cli.train.encoder_weights import WeightsSource, fetch_weights
from petseg_cli.config.settings import DownloadSettings, load_settings, validate

BAD = [
    ("connect_timeout", 0.0, "download.connect_timeout must be positive, got 0.0"),
    ("read_timeout", 0.0, "download.read_timeout must be positive, got 0.0"),
    ("connect_timeout", -1.0, "download.connect_timeout must be positive, got -1.0"),
    ("retry_delay", -0.5, "download.retry_delay must be 0 or more, got -0.5"),
    ("retries", -1, "download.retries must be at least 0, got -1"),
]


def message_of(call) -> str:
    with pytest.raises(UsageError) as caught:
        call()
    return str(caught.value)


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_every_path_refuses_the_same_value_with_the_same_line(key, value, message, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    settings = load_settings(config=None, overrides={"download": {key: value}})
    bad = dataclasses.replace(DownloadSettings(), **{key: value})
    source = WeightsSource("http://127.0.0.1:9/w-00000000.pth", "test weights")
    seen = {
        "settings": message_of(lambda: validate(settings)),
        "dataset download": message_of(lambda: download(tmp_path / "data", ("http://127.0.0.1:9/",), bad)),
        "encoder weights": message_of(lambda: fetch_weights(source, bad)),
    }
    assert seen == dict.fromkeys(seen, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was created by either download
