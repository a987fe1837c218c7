"""Untrusted checkpoint files cannot run code: they are loaded with weights_only=True and refused."""

import os

import pytest
import torch

from petseg_cli.base.errors import PetsegError
from petseg_cli.run.checkpoint import load_checkpoint


class RunsCode:
    """Pickles as a call to os.system: unpickling it would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_execute_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pth"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, path)
    with pytest.raises(PetsegError, match="was refused: it holds more than weights"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "best.pth"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PetsegError, match="truncated or not a checkpoint"):
        load_checkpoint(path)


def test_file_without_weights_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "best.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(PetsegError, match="not a petseg checkpoint"):
        load_checkpoint(path)


def test_mismatch_names_the_tensors_that_differ():
    from petseg_cli.models import build_model
    from petseg_cli.run.model import describe_mismatch

    with_cbam = build_model("resnet34-unet", cbam=True).state_dict()
    without = build_model("resnet34-unet", cbam=False).state_dict()
    message = describe_mismatch(without, with_cbam)
    assert "unexpected, e.g. center.6.0.mlp.0.weight" in message and "missing" not in message
    resized = dict(without, **{"head.weight": torch.zeros(3, 32, 1, 1)})
    assert "head.weight: (3, 32, 1, 1) saved, (2, 32, 1, 1) expected" in describe_mismatch(without, resized)
