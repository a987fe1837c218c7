"""The training loop does not make the host wait for the device at every step: reading a tensor's value
(``.item()``, ``.tolist()``: aten's ``_local_scalar_dense``) happens a bounded number of times per
epoch, however many steps the epoch has. Counted on the real operators torch dispatches."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import petseg_cli.train.loop as train_module
from petseg_cli.config.settings import load_settings
from petseg_cli.train import train
from synthetic import make_dataset

READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}


class CountReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def reads_during_training(data, runs_dir, batch_size):
    settings = load_settings(
        overrides={
            "data": {"data_dir": str(data), "image_size": 32},
            "model": {"name": "resnet34-unet"},
            "train": {"epochs": 1, "batch_size": batch_size, "runs_dir": str(runs_dir), "compile": False},
        }
    )
    with CountReads() as counter:
        train(settings)
    return counter.reads


@pytest.mark.slow  # two trainings: ~8 s
def test_host_reads_per_epoch_do_not_grow_with_the_number_of_steps(tmp_path, monkeypatch):
    # Checks at most every MAX_CHECK_EVERY steps, whatever the machine's speed: timing cannot decide the result.
    monkeypatch.setattr(train_module, "CHECK_SECONDS", 1e9)
    data = make_dataset(tmp_path / "pets", n_trainval=16, n_test=1, size=(32, 32))  # 14 train, 2 val images
    few = reads_during_training(data, tmp_path / "few", batch_size=14)  # 1 step, 1 validation batch
    many = reads_during_training(data, tmp_path / "many", batch_size=2)  # 7 steps, 1 validation batch
    # One read per step would add at least 6 reads.
    assert many - few <= 1, (few, many)
