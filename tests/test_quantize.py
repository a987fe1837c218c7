"""`petseg export --int8`: the int8 model round-trips (metadata, masks from `infer --model-file`), is served
without torch, and is not written when its self-check fails."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import invoke_cli
from run_files import copy_run, petseg_in_a_fresh_process
from synthetic import photo

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install -e '.[onnx]'")

from petseg_cli.export.command import ExportOptions  # noqa: E402
from petseg_cli.predict.onnx_backend import OnnxPredictor  # noqa: E402
from petseg_cli.export.quantize import DEFAULT_MIN_AGREEMENT, SEARCH_METHODS, Candidate, keeps_fp32  # noqa: E402


@pytest.fixture(scope="module")
def int8(tiny_run_exports):  # slow: its tests are marked so
    """The tiny run exported with --int8 and the defaults (RUN/model.int8.onnx; made once for the whole
    run, conftest.py)."""
    return tiny_run_exports[1]


@pytest.mark.slow  # the int8 fixture: a quantization search, tens of seconds of CPU
def test_int8_export_writes_run_model_int8_onnx_with_int8_weights_and_the_fp32_metadata(tiny_run, int8):
    import onnx

    from petseg_cli.export.command import build_metadata
    from petseg_cli.run import Run

    assert int8.path == tiny_run / "model.int8.onnx" and int8.path.is_file()
    model = onnx.load(str(int8.path))
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    run = Run.open(tiny_run)
    checkpoint = run.load_model()[1]  # what a plain (fp32) export writes
    metadata = build_metadata(run, checkpoint.get("model_args"), ExportOptions(), run.threshold_for("best", False).value)
    fp32_props = {k: json.loads(v) for k, v in metadata.to_strings().items()}
    assert props["petseg.precision"] == "int8" and fp32_props["petseg.precision"] == "fp32"
    assert {k: v for k, v in props.items() if k not in ("petseg.precision", "petseg.quantization")} == {
        k: v for k, v in fp32_props.items() if k != "petseg.precision"
    }
    facts = props["petseg.quantization"]
    assert facts["method"] in SEARCH_METHODS and facts["calibration_split"] == "train"
    assert facts["calibration_images"] == 18  # the 20 trainval images less the 2 of the val split
    assert facts["check"]["images"] == 2 and facts["check"]["agreement"] >= DEFAULT_MIN_AGREEMENT
    assert [c["method"] for c in facts["candidates"]][: len(SEARCH_METHODS)] == list(SEARCH_METHODS)
    assert set(facts["fp32_layers"]) <= {"first conv", "head", "sigmoid gates"}
    # The convolutions' weights are int8 (per output channel), all but those kept in fp32.
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(int8_weights) >= len(convs) - len(facts["fp32_nodes"]) > 0
    assert int8.bytes <= 0.3 * int8.int8.fp32_bytes  # the fp32 ONNX model it was made from
    assert any("int8 self-check on 2 validation photos" in line for line in int8.report())
    assert not list(Path.cwd().glob("sym_shape_infer_temp*"))  # onnxruntime's tools leave nothing behind


def test_a_layer_group_stays_fp32_when_needed_for_the_bar_or_when_it_gains_agreement_cheaply():
    without = Candidate("minmax", (), agreement=0.995, images_per_second=20.0)

    def kept(agreement, speed, bar=0.99):
        return keeps_fp32(without, Candidate("minmax", ("head",), agreement, speed), bar)

    assert kept(0.996, 19.5)  # +0.1 point for 2.5% of the speed
    assert not kept(0.996, 18.0)  # +0.1 point for 10% of the speed: int8 is for speed
    assert not kept(0.9952, 20.0)  # +0.02 point: noise
    assert not kept(0.994, 21.0)  # lost agreement
    assert kept(0.996, 10.0, bar=0.999)  # below the bar, any gain is kept, whatever it costs
    assert not kept(0.995, 10.0, bar=0.999)


@pytest.mark.slow  # the int8 fixture: a quantization search, tens of seconds of CPU
def test_infer_serves_masks_from_the_int8_file_like_the_fp32_model(tiny_run, int8, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, (w, h) in enumerate([(120, 90), (64, 64), (50, 200)]):
        Image.fromarray(photo(w, h, seed=seed)).save(folder / f"p{seed}.jpg")
    by_int8 = invoke_cli("infer", str(folder), "-o", "int8", "--model-file", str(int8.path), cwd=tmp_path)
    by_torch = invoke_cli("infer", str(folder), "-o", "torch", "--run", str(tiny_run), cwd=tmp_path)
    assert by_int8.returncode == 0 and by_torch.returncode == 0, by_int8.stderr + by_torch.stderr
    assert "CPUExecutionProvider, int8" in by_int8.stderr  # the startup line names the precision
    same = total = 0
    for mask in sorted((tmp_path / "torch").glob("*.png")):
        with Image.open(mask) as a, Image.open(tmp_path / "int8" / mask.name) as b:
            assert a.size == b.size
            same, total = same + int((np.asarray(a) == np.asarray(b)).sum()), total + a.size[0] * a.size[1]
    assert total and same / total >= DEFAULT_MIN_AGREEMENT
    predictor = OnnxPredictor.load(int8.path)
    assert predictor.metadata.precision == "int8" and predictor.metadata.quantization["method"] in SEARCH_METHODS


@pytest.mark.slow  # the int8 fixture: a quantization search, tens of seconds of CPU
def test_infer_on_an_int8_file_never_imports_torch(int8, tmp_path):
    Image.fromarray(photo(48, 40)).save(tmp_path / "one.jpg")
    args = ["infer", "one.jpg", "-o", "out", "--threads", "1", "--model-file", str(int8.path)]
    code, loaded, stderr = petseg_in_a_fresh_process(args, tmp_path, ("torch",))
    assert code == 0 and loaded == [], stderr
    assert "int8" in stderr and (tmp_path / "out" / "one.png").is_file()


def on_the_boundary(run):
    """Shift the run's head bias so that half the pixels of its validation photos are pet by the smallest
    margins: int8 rounding then flips some of them, and 100% agreement with fp32 cannot be met."""
    import torch

    from petseg_cli.export.command import build_metadata
    from petseg_cli.run import Run
    from petseg_cli.export.quantize import batches, photos

    opened = Run.open(run)
    model, checkpoint = opened.load_model()
    metadata = build_metadata(opened, checkpoint.get("model_args"), ExportOptions(), 0.5)
    images = [image for image, _ in photos(opened.dataset_dir, "val", 32, 0)]
    with torch.inference_mode():
        logits = torch.cat([model.float().eval()(torch.from_numpy(b)) for b in batches(images, metadata)])
    margin = float((logits[:, 1] - logits[:, 0]).median())
    checkpoint["state_dict"]["head.bias"] = checkpoint["state_dict"]["head.bias"] - torch.tensor([0.0, margin])
    torch.save(checkpoint, run / "best.pth")


@pytest.mark.slow
def test_a_model_that_fails_the_int8_self_check_is_not_written(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    on_the_boundary(run)
    # 4 calibration photos (of 18): a quicker search, and the same failure
    result = invoke_cli("export", str(run), "--int8", "--static", "--calibration", "4", "--min-agreement", "1.0", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "int8 self-check failed, nothing written" in result.stderr and "at least 100.00% needed" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (run / "model.int8.onnx").exists() and not list(run.glob(".*.tmp"))


@pytest.mark.slow  # the int8 fixture
def test_int8_quantizes_the_runs_fp32_file_only_when_it_is_the_model_this_export_would_make(tiny_run, int8, tmp_path):
    """The shared exports made RUN/model.onnx first, so --int8 quantized that file instead of exporting
    again (and said so); a file from other weights, another threshold or other options is not taken."""
    import shutil
    from dataclasses import replace

    from petseg_cli.export.command import build_metadata, earlier_export
    from petseg_cli.run import Run

    assert int8.quantized_from is not None and int8.quantized_from.name == "model.onnx"
    assert any(line.startswith(f"quantized {int8.quantized_from} (exported earlier") for line in int8.report())
    run = Run.open(tiny_run)
    metadata = build_metadata(run, run.load_model()[1].get("model_args"), ExportOptions(), run.threshold_for("best", False).value)
    found = earlier_export(tiny_run, metadata, ExportOptions(int8=True))
    assert found is not None and found[0] == tiny_run / "model.onnx" and found[1] == found[0].read_bytes()
    assert earlier_export(tiny_run, metadata, ExportOptions(int8=True, dynamic=False)) is None  # the file is dynamic
    assert earlier_export(tiny_run, metadata, ExportOptions(int8=True, opset=19)) is None
    assert earlier_export(tiny_run, replace(metadata, threshold=0.4), ExportOptions(int8=True)) is None
    assert earlier_export(tiny_run, replace(metadata, weights_sha256="0" * 64), ExportOptions(int8=True)) is None
    assert earlier_export(tiny_run, replace(metadata, run="renamed"), ExportOptions(int8=True)) is not None  # a copied run
    other = tmp_path / "run"
    other.mkdir()
    assert earlier_export(other, metadata, ExportOptions(int8=True)) is None  # none there
    (other / "model.onnx").write_bytes(b"not an onnx file")
    assert earlier_export(other, metadata, ExportOptions(int8=True)) is None
    shutil.copyfile(int8.path, other / "model.onnx")  # an int8 file at the fp32 file's name
    assert earlier_export(other, metadata, ExportOptions(int8=True)) is None
    import onnx

    proto = onnx.load(tiny_run / "model.onnx")
    del proto.graph.input[:]  # petseg's metadata on a graph without its image input: not taken, no traceback
    onnx.save(proto, other / "model.onnx")
    assert earlier_export(other, metadata, ExportOptions(int8=True)) is None


def test_int8_option_errors_are_one_line_and_a_lowered_bar_warns(tiny_run, tmp_path):
    cases = [
        (["--int8", "--fp16"], "--int8 and --fp16 are two exports"),
        (["--int8", "--format", "torchscript"], "TorchScript export was dropped"),
        (["--int8", "--calibration", "0"], "--calibration must be at least 1"),
        (["--int8", "--min-agreement", "1.5"], "--min-agreement must be above 0 and at most 1"),
    ]
    for args, message in cases:
        result = invoke_cli("export", str(tiny_run), "-o", str(tmp_path / "m.onnx"), *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    (tmp_path / "taken.onnx").write_bytes(b"x")
    result = invoke_cli("export", str(tiny_run), "--int8", "--min-agreement", "0.9", "-o", "taken.onnx", cwd=tmp_path)
    assert result.returncode == 2 and "warning: --min-agreement 0.9 is below the default 0.99" in result.stderr
    assert "already exists" in result.stderr and not (tmp_path / "m.onnx").exists()


@pytest.mark.slow  # the int8 fixture: a quantization search, tens of seconds of CPU
def test_serve_answers_with_the_int8_file_and_says_int8(int8, caplog):
    from test_serve_parts import jpeg_bytes, serving, wait_ready

    from petseg_cli.predict.predictor import open_predictor

    with caplog.at_level("INFO", logger="petseg"), serving(lambda: open_predictor(int8.path, device="cpu", threads=1)) as client:
        wait_ready(client)
        model = client.get("/v1/model").json()
        assert model["precision"] == "int8" and model["backend"] == "onnxruntime"
        answer = client.post("/v1/masks?format=mask", content=jpeg_bytes(48, 40))
        assert answer.status_code == 200, answer.text
        with Image.open(io.BytesIO(answer.content)) as mask:
            assert mask.size == (48, 40)
    assert "onnxruntime int8" in caplog.text  # the ready line
