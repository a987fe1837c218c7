import pytest

from petseg_cli.base.errors import PetsegError
from petseg_cli.run import create_run_dir, default_run_name


def test_default_run_name_marks_batch_and_no_cbam():
    assert default_run_name("unet", 8) == "unet-bs8"
    assert default_run_name("resnet34-unet", 16, cbam=False) == "resnet34-unet-no-cbam-bs16"
    assert default_run_name("unet", 8, cbam=False) == "unet-bs8"  # U-Net has no CBAM to drop


def test_run_names_increment_and_never_reuse(tmp_path):
    made = [create_run_dir(tmp_path, "unet-bs8", explicit=False).name for _ in range(3)]
    assert made == ["unet-bs8", "unet-bs8-2", "unet-bs8-3"]


def test_explicit_name_that_exists_is_refused(tmp_path):
    create_run_dir(tmp_path, "mine", explicit=True)
    with pytest.raises(PetsegError, match="already exists"):
        create_run_dir(tmp_path, "mine", explicit=True)
