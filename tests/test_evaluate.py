import csv
import json

import pytest
from PIL import Image

from conftest import invoke_cli
from petseg_cli.run import Measure, read_config
from petseg_cli.cli.app import fill_optional_values
from petseg_cli.commands.evaluate import CSV_COLUMNS, DEFAULT_VISUALIZE, DPI, KEY_INCHES, TILE_INCHES, grid_shape, sample_indices

JSON_KEYS = {
    "run", "split", "images", "dice", "pooled_dice", "iou", "pixel_accuracy", "cross_entropy", "seconds",
    "images_per_s", "settings", "skipped", "petseg_version", "torch_version", "date", "data",
}
SETTINGS_KEYS = {
    "model", "weights", "model_file", "runtime", "runtime_choice", "checkpoint_epoch", "checkpoint_weights", "tta", "tta_scales", "at", "image_size", "precision", "channels_last", "batch_size",
    "device", "data_dir", "subset", "threshold",
}
TEST_IMAGES = 10  # the session dataset's test split


def read_json(run_dir, split, weights="best", at="original", tta=False):
    return json.loads(Measure(split, weights, at, tta).file(run_dir, "json").read_text())


def table_cell(stdout, run_dir, header):
    """The value under ``header`` in the row of ``run_dir`` of the printed table."""
    lines = stdout.splitlines()
    headers = [h.strip() for h in next(line for line in lines if "pooled Dice" in line).split("┃")]
    row = [c.strip() for c in next(line for line in lines if f"│ {run_dir.name} " in line).split("│")]
    return row[headers.index(header)]


def assert_grid(run_dir, split, tiles, weights="best"):
    rows, columns = grid_shape(tiles)
    with Image.open(Measure(split, weights).file(run_dir, "samples")) as picture:
        assert picture.size == (round(columns * TILE_INCHES * DPI), round((rows * TILE_INCHES + KEY_INCHES) * DPI))


def test_evaluate_writes_json_csv_and_samples_and_csv_dice_averages_to_the_headline(tiny_run, tmp_path, config_reads):
    config_reads.clear()
    result = invoke_cli("evaluate", str(tiny_run), "--visualize", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert config_reads == [tiny_run / "config.toml"]  # the run's config parsed once

    record = read_json(tiny_run, "test")
    assert set(record) == JSON_KEYS and set(record["settings"]) == SETTINGS_KEYS
    assert (record["settings"]["model_file"], record["settings"]["runtime"]) == (None, "torch")  # the run's own model
    assert record["split"] == "test" and record["images"] == TEST_IMAGES
    assert record["settings"]["weights"] == "best" and record["settings"]["image_size"] == 64
    assert 0.0 <= record["dice"] <= 1.0 and 0.0 <= record["pixel_accuracy"] <= 1.0

    with open(Measure("test").file(tiny_run, "csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == TEST_IMAGES
    assert {r["species"] for r in rows} == {"cat", "dog"}
    csv_mean = sum(float(r["dice"]) for r in rows) / len(rows)
    headline = float(table_cell(result.stdout, tiny_run, "Dice"))
    assert abs(csv_mean - headline) <= 0.5e-4 + 1e-6
    assert csv_mean == pytest.approx(record["dice"], abs=1e-6)
    assert sum(float(r["iou"]) for r in rows) / len(rows) == pytest.approx(record["iou"], abs=1e-6)

    assert_grid(tiny_run, "test", DEFAULT_VISUALIZE)  # --visualize without a number
    assert not [p for p in tiny_run.iterdir() if p.name.endswith(".tmp")]


def test_val_scores_at_training_size_agree_with_training_in_the_runs_precision(tiny_run, tmp_path):
    plain = invoke_cli("evaluate", str(tiny_run), "--split", "val", "--at", "training", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    record = read_json(tiny_run, "val", at="training")
    config = read_config(tiny_run)[1]
    # Validation ran in the run's precision and memory format (bf16 and NHWC on a CPU with native bf16):
    # evaluate computes the same way, and says so.
    assert record["settings"]["precision"] == config["precision"]
    assert record["settings"]["channels_last"] == config["channels_last"]
    assert record["settings"]["tta"] is False and "TTA" not in plain.stdout
    best = json.loads((tiny_run / "history.json").read_text())["epochs"][0]
    assert record["dice"] == pytest.approx(best["val_dice"], abs=1e-6)
    assert record["cross_entropy"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_a_run_trained_on_part_of_the_data_is_scored_on_the_val_images_it_validated_on(dataset, tmp_path):
    from petseg_cli.config.settings import load_settings
    from petseg_cli.train import train

    settings = load_settings(overrides={
        "data": {"data_dir": str(dataset), "image_size": 32, "limit": 9},
        "train": {"recipe": "seed", "epochs": 1, "batch_size": 4, "runs_dir": str(tmp_path / "runs")},
    })
    run = train(settings).run_dir
    result = invoke_cli("evaluate", str(run), "--split", "val", "--at", "training", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = read_json(run, "val", at="training")
    history = json.loads((run / "history.json").read_text())
    images = read_config(run)[1]["images"]["val"]
    from petseg_cli.data.oxford_pet import split_samples

    assert record["images"] == images < len(split_samples(dataset, "val"))
    assert "scoring the" in result.stderr and record["settings"]["subset"].startswith(f"the {images} val images")
    assert record["dice"] == pytest.approx(history["epochs"][0]["val_dice"], abs=1e-6)


def test_each_way_of_measuring_has_its_own_file_and_tta_never_replaces_the_plain_figure(tiny_run, tmp_path):
    plain = invoke_cli("evaluate", str(tiny_run), "--split", "val", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    before = read_json(tiny_run, "val")
    tta = invoke_cli("evaluate", str(tiny_run), "--split", "val", "--tta", cwd=tmp_path)
    assert tta.returncode == 0, tta.stderr
    assert "TTA" in tta.stdout and read_json(tiny_run, "val", tta=True)["settings"]["tta"] is True
    assert read_json(tiny_run, "val") == before  # the plain figure is still there, unchanged
    assert before["settings"]["at"] == "original" and "original size" in plain.stdout


def test_original_size_scores_against_full_size_trimaps(tiny_run, dataset):
    """At original size every CSV row is scored against the trimap at the photo's own size: the
    foreground fraction equals the full-size trimap's, which the training-size mask only approximates."""
    from petseg_cli.data.images import read_label
    from petseg_cli.data.oxford_pet import trimap_to_mask
    from petseg_cli.commands.evaluate import EvaluateOptions, evaluate

    evaluate([tiny_run], EvaluateOptions(split="test", at="original", data_dir=dataset))
    with open(Measure("test").file(tiny_run, "csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        mask = trimap_to_mask(read_label(dataset / "annotations" / "trimaps" / f"{row['name']}.png"))
        assert float(row["foreground_fraction"]) == pytest.approx(mask.mean(), abs=1e-6)


def test_worst_samples_with_last_weights(tiny_run, tmp_path):
    result = invoke_cli("evaluate", str(tiny_run), "--visualize", "3", "--worst", "--weights", "last", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_json(tiny_run, "test", weights="last")["settings"]["weights"] == "last"
    assert_grid(tiny_run, "test", 3, weights="last")


def test_samples_grid_shape_and_choice():
    assert grid_shape(10) == (2, 5) and grid_shape(3) == (1, 3) and grid_shape(11) == (3, 5)
    dice = [0.9, 0.1, 0.5, 0.3]
    assert sample_indices(dice, 2, worst=False) == [0, 1]
    assert sample_indices(dice, 3, worst=True) == [1, 3, 2]


def test_visualize_without_a_number_takes_the_default():
    n = str(DEFAULT_VISUALIZE)
    assert fill_optional_values(["evaluate", "r", "--visualize"]) == ["evaluate", "r", "--visualize", n]
    assert fill_optional_values(["evaluate", "--visualize", "r"]) == ["evaluate", "--visualize", n, "r"]
    assert fill_optional_values(["evaluate", "r", "--visualize", "4"]) == ["evaluate", "r", "--visualize", "4"]
    assert fill_optional_values(["evaluate", "--", "--visualize"]) == ["evaluate", "--", "--visualize"]


def test_visualize_before_a_run_named_by_a_number_takes_the_default_and_other_commands_are_untouched(tmp_path, monkeypatch):
    n = str(DEFAULT_VISUALIZE)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2024").mkdir()  # a run directory named 2024
    assert fill_optional_values(["evaluate", "--visualize", "2024"]) == ["evaluate", "--visualize", n, "2024"]
    assert fill_optional_values(["evaluate", "2024", "--visualize", "3"]) == ["evaluate", "2024", "--visualize", "3"]
    for other in (["infer", "--visualize"], ["train", "--name", "--visualize"], ["compare", "--visualize", "x"]):
        assert fill_optional_values(other) == other


def test_missing_data_says_how_to_download(tiny_run, tmp_path):
    result = invoke_cli("evaluate", str(tiny_run), "--data-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert result.returncode == 1
    assert "petseg download" in result.stderr and "Traceback" not in result.stderr


def test_a_directory_that_is_no_run_is_refused_in_one_line(tmp_path):
    result = invoke_cli("evaluate", str(tmp_path), "--split", "nope", cwd=tmp_path)
    assert result.returncode == 2 and "--split" in result.stderr
    result = invoke_cli("evaluate", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "not a petseg run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_scores_by_species_add_up_to_the_split_and_the_sweep_at_one_half_is_the_plain_figure(spread_run, tmp_path):
    result = invoke_cli(
        "evaluate", str(spread_run), "--by", "species", "--by", "breed", "--thresholds", "0.3:0.7:0.1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    record = read_json(spread_run, "test")
    species = record["by"]["species"]
    assert sorted(row["group"] for row in species) == ["cat", "dog"]  # the generated data has both
    assert sum(row["count"] for row in species) == record["images"] == TEST_IMAGES
    assert sum(row["count"] for row in record["by"]["breed"]) == TEST_IMAGES
    assert (spread_run / "eval-test-best-original-by-species.csv").is_file()
    mean = sum(row["dice"] * row["count"] for row in species) / TEST_IMAGES
    assert mean == pytest.approx(record["dice"], abs=1e-9)
    sweep = dict(map(tuple, record["thresholds"]["dice"]))
    assert sweep[0.5] == pytest.approx(record["dice"], abs=1e-6)
    assert len(set(sweep.values())) > 1 and 0 <= record["thresholds"]["ece"] <= 1
    assert (spread_run / "reliability-test-best-original.png").is_file()
    assert not (spread_run / "threshold.json").exists()  # never chosen on the test split
    compared = invoke_cli("compare", str(spread_run), "--format", "json", cwd=tmp_path)
    worst = min(record["by"]["breed"], key=lambda row: row["dice"])
    assert json.loads(compared.stdout)[0]["worst_breed"] == f"{worst['group']} {worst['dice']:.4f}"


def test_a_threshold_chosen_on_val_is_what_infer_then_uses(spread_run, tmp_path):
    import shutil

    from PIL import Image

    from synthetic import photo

    run = tmp_path / "run"
    shutil.copytree(spread_run, run)
    result = invoke_cli("evaluate", str(run), "--split", "val", "--thresholds", "0.2,0.8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads((run / "threshold.json").read_text())["tuned"]
    chosen = record["threshold"]
    assert (record["weights"], record["tta"]) == ("best", False)
    assert chosen in (0.2, 0.8) and "kept for infer and serve with best weights, no TTA" in result.stderr
    Image.fromarray(photo(90, 70, 1)).save(tmp_path / "p.jpg")
    result = invoke_cli("infer", "p.jpg", "--run", str(run), "-o", "p.png", cwd=tmp_path)
    assert result.returncode == 0 and f"threshold {chosen:g} (tuned for best weights, no TTA" in " ".join(result.stderr.split())
    result = invoke_cli("evaluate", str(run), "--split", "val", cwd=tmp_path)  # scores the masks infer writes now
    assert result.returncode == 0 and read_json(run, "val")["settings"]["threshold"] == chosen
