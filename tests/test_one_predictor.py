"""One predictor under every command: evaluate scores exactly the masks infer writes, infer and serve take
--weights, and a run computes in the precision it recorded."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import invoke_cli

from petseg_cli.data.images import read_label
from petseg_cli.data.oxford_pet import split_samples, trimap_to_mask


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    p, g = mask != 0, truth != 0
    total = p.sum() + g.sum()
    return 1.0 if total == 0 else 2 * float((p & g).sum()) / float(total)


def test_evaluate_at_original_size_scores_exactly_the_masks_that_infer_writes(spread_run, dataset, tmp_path):
    result = invoke_cli("evaluate", str(spread_run), "--split", "test", "--data-dir", str(dataset), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(spread_run / "eval-test-best-original.csv") as f:
        scored = {row["name"]: float(row["dice"]) for row in csv.DictReader(f)}

    samples = split_samples(dataset, "test")
    masks = tmp_path / "masks"
    result = invoke_cli("infer", *(str(s.image_path) for s in samples), "--run", str(spread_run), "-o", str(masks), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = {}
    for sample in samples:
        mask = np.asarray(Image.open(masks / f"{sample.name}.png"))
        written[sample.name] = dice(mask, trimap_to_mask(read_label(sample.trimap_path)))
    assert set(written) == set(scored)
    assert max(abs(written[n] - scored[n]) for n in scored) <= 1e-4
    assert len({round(d, 3) for d in written.values()}) > 1  # masks that differ from photo to photo


def test_infer_with_weights_last_uses_last_pth_and_refuses_a_bad_choice(tiny_run, tmp_path):
    from synthetic import photo

    Image.fromarray(photo(70, 50)).save(tmp_path / "a.jpg")
    result = invoke_cli("infer", "a.jpg", "--run", str(tiny_run), "--weights", "last", "-o", "a.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "last.pth" in result.stderr and (tmp_path / "a.png").is_file()
    result = invoke_cli("infer", "a.jpg", "--run", str(tiny_run), "--weights", "newest", "-o", "b.png", cwd=tmp_path)
    assert result.returncode == 2 and "--weights must be one of: best, last" in result.stderr
    assert not (tmp_path / "b.png").exists()


def test_a_run_is_evaluated_and_inferred_in_the_precision_it_recorded(tiny_run, tmp_path):
    import shutil

    import tomli_w

    from petseg_cli.run import read_config
    from petseg_cli.config.settings import read_toml
    from synthetic import photo

    run = tmp_path / "bf16-run"
    shutil.copytree(tiny_run, run)
    table = read_toml(run / "config.toml")
    trained = read_config(run)[1]["precision"]
    other = "bf16" if trained == "fp32" else "fp32"
    table["run"]["precision"] = other  # as a run trained where the other precision was chosen records it
    (run / "config.toml").write_text(tomli_w.dumps(table))

    Image.fromarray(photo(70, 50)).save(tmp_path / "a.jpg")
    result = invoke_cli("infer", "a.jpg", "--run", str(run), "-o", "a.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f", {other})" in result.stderr
    result = invoke_cli("infer", "a.jpg", "--run", str(run), "--precision", trained, "-o", "b.png", cwd=tmp_path)
    assert result.returncode == 0 and f", {trained})" in result.stderr
    result = invoke_cli("evaluate", str(run), "--split", "val", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "eval-val-best-original.json").read_text())["settings"]["precision"] == other
