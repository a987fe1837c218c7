"""--encoder-weights: torchvision-format ResNet34 weights downloaded from a local server (verified by
hash, cached in torch's hub cache, loaded with weights_only), loaded from a local file, and refused
with every key named when they do not fit."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from conftest import run_cli
from petseg_cli.base.errors import PetsegError, UsageError
from petseg_cli.models import build_model
from petseg_cli.train.encoder_weights import WeightsSource, load_encoder_weights
from petseg_cli.config.settings import DownloadSettings, load_settings
from petseg_cli.train.validation import validate_settings as validate

FAST = DownloadSettings(retries=0, retry_delay=0.01, connect_timeout=5.0, read_timeout=5.0)


def torchvision_resnet34_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision.models.resnet34's state dict keys and shapes, written from its architecture."""

    def bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
        stats = ("weight", "bias", "running_mean", "running_var")
        return {**{f"{prefix}.{s}": (channels,) for s in stats}, f"{prefix}.num_batches_tracked": ()}

    shapes = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    inplanes = 64
    for stage, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for block in range(blocks):
            p, cin = f"layer{stage}.{block}", inplanes if block == 0 else planes
            shapes |= {f"{p}.conv1.weight": (planes, cin, 3, 3), **bn(f"{p}.bn1", planes)}
            shapes |= {f"{p}.conv2.weight": (planes, planes, 3, 3), **bn(f"{p}.bn2", planes)}
            if block == 0 and cin != planes:
                shapes |= {f"{p}.downsample.0.weight": (planes, cin, 1, 1), **bn(f"{p}.downsample.1", planes)}
        inplanes = planes
    return shapes | {"fc.weight": (1000, 512), "fc.bias": (1000,)}


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(0, 100, s, generator=generator) if k.endswith("num_batches_tracked")
        else torch.rand(s, generator=generator) + 0.5  # positive: valid running_var too
        for k, s in shapes.items()
    }


def to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def weights() -> tuple[dict[str, torch.Tensor], bytes]:
    state = random_state(torchvision_resnet34_shapes())
    return state, to_bytes(state)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.files, srv.requests = {}, []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def publish(server, body: bytes, hash_prefix: str | None = None) -> WeightsSource:
    """Serve ``body`` under a torch.hub-style name carrying (by default) its true SHA-256 prefix."""
    prefix = hash_prefix or hashlib.sha256(body).hexdigest()[:8]
    name = f"/resnet34-{prefix}.pth"
    server.files[name] = body
    return WeightsSource(f"http://127.0.0.1:{server.server_port}{name}", "test ResNet34 weights")


def encoder():
    return build_model("resnet34-unet").encoder


def assert_loaded(enc, state):
    loaded = enc.state_dict()
    for key, tensor in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], tensor.to(loaded[key].dtype)), key
    assert not [k for k in loaded if k.startswith("fc.")]


def test_imagenet_downloads_verifies_caches_and_loads(server, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state, body = weights
    source = publish(server, body)
    enc = encoder()
    message = load_encoder_weights(enc, "imagenet", FAST, source)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / source.filename
    assert cached.read_bytes() == body and str(cached) in message
    assert_loaded(enc, state)
    assert len(server.requests) == 1

    again = encoder()
    load_encoder_weights(again, "imagenet", FAST, source)
    assert len(server.requests) == 1  # from the cache
    assert_loaded(again, state)


def test_a_wrong_hash_is_refused_and_nothing_is_loaded(server, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _, body = weights
    wrong = "0" * 8 if not hashlib.sha256(body).hexdigest().startswith("0" * 8) else "f" * 8
    source = publish(server, body, hash_prefix=wrong)
    enc = encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(PetsegError, match="failed verification") as caught:
        load_encoder_weights(enc, "imagenet", FAST, source)
    assert "\n" not in str(caught.value)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert not list(checkpoints.iterdir())  # neither the file nor its .part


def test_a_corrupted_cached_file_is_downloaded_again(server, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state, body = weights
    source = publish(server, body)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / source.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(body[:1000])
    enc = encoder()
    load_encoder_weights(enc, "imagenet", FAST, source)
    assert len(server.requests) == 1 and cached.read_bytes() == body
    assert_loaded(enc, state)


def test_a_local_path_loads_the_same(weights, tmp_path):
    state, body = weights
    path = tmp_path / "copied.pth"
    path.write_bytes(body)
    enc = encoder()
    assert str(path) in load_encoder_weights(enc, str(path), FAST)
    assert_loaded(enc, state)


def test_a_mismatched_file_names_every_key_that_does_not_fit(weights, tmp_path):
    state, _ = weights
    bad = dict(state)
    del bad["layer4.2.bn2.weight"]
    bad["extra.weight"] = torch.zeros(3)
    bad["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    path = tmp_path / "bad.pth"
    path.write_bytes(to_bytes(bad))
    enc = encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(PetsegError) as caught:
        load_encoder_weights(enc, str(path), FAST)
    message = str(caught.value)
    assert "\n" not in message
    for name in ("layer4.2.bn2.weight", "extra.weight", "conv1.weight (64, 4, 7, 7)"):
        assert name in message
    assert "fc." not in message
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_a_file_that_is_no_state_dict_is_one_line(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PetsegError) as caught:
        load_encoder_weights(encoder(), str(path), FAST)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="does not exist"):
        load_encoder_weights(encoder(), str(tmp_path / "missing.pth"), FAST)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_at_once_saying_where_the_file_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = WeightsSource(f"http://127.0.0.1:{closed_port()}/resnet34-b627a593.pth", "ResNet34 ImageNet weights")
    started = time.monotonic()
    with pytest.raises(PetsegError) as caught:
        load_encoder_weights(encoder(), "imagenet", FAST, source)
    message = str(caught.value)
    assert time.monotonic() - started < FAST.connect_timeout
    assert "\n" not in message and "--encoder-weights PATH" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet34-b627a593.pth") in message


def test_unet_has_no_pretrained_encoder():
    for flags in ({"encoder_weights": "imagenet"}, {}):
        train = {"freeze_encoder_epochs": 2} if not flags else {}
        settings = load_settings(overrides={"model": {"name": "unet", **flags}, "train": train})
        with pytest.raises(UsageError, match="unet has no pretrained encoder"):
            validate(settings)


def test_pretrained_weights_need_imagenet_normalisation():
    settings = load_settings(overrides={"model": {"encoder_weights": "imagenet"}, "data": {"normalization": "none"}})
    with pytest.raises(UsageError, match="normalization"):
        validate(settings)


@pytest.mark.slow
def test_train_offline_with_imagenet_is_one_line_naming_the_file(dataset, tmp_path):
    (tmp_path / "petseg.toml").write_text("[download]\nretries = 0\nconnect_timeout = 3.0\nread_timeout = 3.0\n")
    result = run_cli(
        "train", "--data-dir", str(dataset), "--image-size", "64", "-e", "1", "--encoder-weights", "imagenet",
        cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "torch"), "http_proxy": "", "https_proxy": ""}, timeout=120,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "resnet34-b627a593.pth" in lines[0] and "--encoder-weights PATH" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_offline_encoder_weights_advise_the_weights_file_not_the_dataset_s_mirror(tmp_path, monkeypatch):
    """A name that does not resolve (the machine offline): the advice is about the weights file, not
    `petseg download --mirror`, which fetches the dataset and cannot fetch these weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = WeightsSource("http://weights.invalid/resnet34-b627a593.pth", "ResNet34 ImageNet weights")
    with pytest.raises(PetsegError) as caught:
        load_encoder_weights(encoder(), "imagenet", FAST, source)
    message = str(caught.value)
    assert message.startswith("cannot resolve weights.invalid") and "--encoder-weights PATH" in message, message
    assert "--mirror" not in message and "images.tar.gz" not in message and "PETSEG_MIRROR" not in message
