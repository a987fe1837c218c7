"""`petseg export` and serving the exported model: metadata, agreement with torch, safe writing, errors,
and `petseg infer --model-file` without torch."""

import hashlib
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, invoke_cli
from run_files import copy_run, petseg_in_a_fresh_process
from synthetic import photo
from test_infer import write_formats

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install -e '.[onnx]'")

from petseg_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from petseg_cli.base.errors import UsageError  # noqa: E402
from petseg_cli.export.command import ExportOptions, earlier_export, export  # noqa: E402
from petseg_cli.commands.infer import InferOptions, infer  # noqa: E402
from petseg_cli.data.masks import pet_mask  # noqa: E402
from petseg_cli.predict.onnx_backend import OnnxPredictor  # noqa: E402
from petseg_cli.predict.runtime_probe import PROBE_BATCH  # noqa: E402

AGREEMENT = 0.999


@pytest.fixture(scope="module")
def exported(tiny_run_exports):
    """The tiny run exported with the defaults (RUN/model.onnx; made once for the whole run, conftest.py)."""
    return tiny_run_exports[0]


def agreement(a, b):
    return float((a == b).mean())


def test_an_exported_file_refuses_weights_and_a_precision_it_does_not_hold(exported):
    """An .onnx file holds the weights and precision it was exported with: asking for others is one line."""
    from petseg_cli.base.errors import UsageError
    from petseg_cli.predict.predictor import open_predictor

    assert open_predictor(exported.path, weights="best", precision="fp32").info.weights == "best"
    with pytest.raises(UsageError, match="--weights last"):
        open_predictor(exported.path, weights="last")
    with pytest.raises(UsageError, match="--precision bf16"):
        open_predictor(exported.path, precision="bf16")


def test_default_export_is_run_model_onnx_with_the_metadata_serving_needs(tiny_run, exported):
    import onnx

    assert exported.path == tiny_run / "model.onnx" and exported.path.is_file()
    model = onnx.load(str(exported.path), load_external_data=False)
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    history = json.loads((tiny_run / "history.json").read_text())
    assert props["petseg.model"] == "resnet34-unet" and props["petseg.model_args"] == {"cbam": True}
    assert props["petseg.image_size"] == 64
    assert props["petseg.mean"] == list(IMAGENET_MEAN) and props["petseg.std"] == list(IMAGENET_STD)
    assert props["petseg.scale"] == 255.0 and props["petseg.classes"] == ["background", "pet"]
    assert props["petseg.best_val_dice"] == history["summary"]["best_val_dice"]
    assert props["petseg.weights_sha256"] == hashlib.sha256((tiny_run / "best.pth").read_bytes()).hexdigest()
    assert props["petseg.weights_file"] == "best.pth" and props["petseg.precision"] == "fp32"
    assert props["petseg.petseg_version"]
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 3 and all(dims[i].dim_param for i in (0, 2, 3))  # dynamic N, H, W
    # The self-check ran on random and real (validation) images and found them in agreement.
    assert exported.check.random_images > 0 and exported.check.real_images > 0
    assert exported.check.agreement >= AGREEMENT and exported.check.max_abs_diff < 1e-3


def test_onnx_predictor_gives_the_torch_probabilities_at_each_image_size(tiny_run, exported):
    from petseg_cli.predict.predictor import open_predictor

    images = [photo(333, 517, seed=1), photo(64, 64, seed=2), photo(1024, 97, seed=3)]
    onnx_model = OnnxPredictor.load(exported.path)
    torch_model = open_predictor(tiny_run, device="cpu")
    assert onnx_model.metadata.image_size == 64 and onnx_model.metadata.model == "resnet34-unet"
    for tta in (False, True):
        served = onnx_model.pet_probabilities(images, tta=tta)
        reference = torch_model.pet_probabilities(images, tta=tta)
        for image, a, b in zip(images, served, reference):
            assert a.shape == b.shape == image.shape[:2] and a.dtype == np.uint8
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # 8-bit rounding at most
            assert agreement(pet_mask(a), pet_mask(b)) >= AGREEMENT


def test_infer_with_model_file_writes_the_masks_of_the_torch_path(tiny_run, exported, tmp_path):
    folder = tmp_path / "formats"
    folder.mkdir()
    expected = write_formats(folder)  # RGBA, CMYK, 16-bit, GIF, a PNG named .jpg …
    Image.fromarray(photo(300, 200)).save(folder / "big.jpg")
    by_torch = infer([str(folder)], InferOptions(output=tmp_path / "torch", run=tiny_run, overlay=True))
    by_onnx = infer([str(folder)], InferOptions(output=tmp_path / "onnx", model_file=exported.path, overlay=True))
    assert by_torch.failed == by_onnx.failed == []
    assert by_onnx.images == len(expected) + 1 and len(by_onnx.written) == 2 * by_onnx.images  # masks and overlays
    same = total = 0
    for mask in (p for p in by_torch.written if p.suffix == ".png"):
        with Image.open(mask) as a, Image.open(tmp_path / "onnx" / mask.name) as b:
            assert a.size == b.size
            same += int((np.asarray(a) == np.asarray(b)).sum())
            total += a.size[0] * a.size[1]
        assert (tmp_path / "onnx" / (mask.stem + "_overlay.jpg")).is_file()
    assert same / total >= AGREEMENT


def test_infer_on_an_onnx_file_never_imports_torch(exported, tmp_path):
    Image.fromarray(photo(48, 40)).save(tmp_path / "one.jpg")
    Image.fromarray(photo(40, 48)).save(tmp_path / "two.png")
    args = ["infer", "one.jpg", "two.png", "-o", "out", "--overlay", "--threads", "1", "--run", str(exported.path), "--runtime", "auto"]
    code, loaded, stderr = petseg_in_a_fresh_process(args, tmp_path, ("torch",))  # auto: onnxruntime and OpenVINO, if installed
    assert code == 0 and loaded == [], stderr
    assert "onnxruntime" in stderr and "1 threads" in stderr and "runtime auto: " in stderr  # what served the masks
    assert (tmp_path / "out" / "one.png").is_file() and (tmp_path / "out" / "two_overlay.jpg").is_file()


def test_segmenter_opens_an_onnx_file_without_torch_and_gives_infers_mask(exported, tmp_path):
    """`Segmenter.load(model.onnx)` in a fresh process where importing torch fails: the mask of `infer --model-file`."""
    Image.fromarray(photo(48, 40)).save(tmp_path / "one.jpg")
    code = (
        "import sys\nsys.modules['torch'] = None  # importing torch now fails\nimport numpy as np\n"
        "from petseg_cli import Segmenter\n"
        "seg = Segmenter.load(sys.argv[1], threads=1)\nnp.save('mask.npy', seg.mask('one.jpg'))\nprint(seg.info.backend)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(exported.path)], cwd=tmp_path, env={"PYTHONPATH": str(REPO)},
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "onnxruntime", done.stderr[-2000:]
    by_infer = infer([str(tmp_path / "one.jpg")], InferOptions(output=tmp_path / "one.png", model_file=exported.path))
    assert by_infer.failed == []
    assert np.array_equal(np.load(tmp_path / "mask.npy"), np.asarray(Image.open(tmp_path / "one.png")))


def test_threads_come_from_the_machine_unless_given(exported):
    from petseg_cli.machine.devices import usable_cores

    default = OnnxPredictor.load(exported.path)
    one = OnnxPredictor.load(exported.path, threads=1)
    assert default.threads == usable_cores()
    assert one.threads == 1 and one.session.get_session_options().intra_op_num_threads == 1
    assert one.providers[-1] == "CPUExecutionProvider"
    with pytest.raises(UsageError, match="--threads"):
        OnnxPredictor.load(exported.path, threads=0)


def test_export_refuses_to_overwrite(tiny_run, exported):
    before = exported.path.read_bytes()
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        export(tiny_run, ExportOptions())
    assert exported.path.read_bytes() == before


@pytest.mark.slow
def test_overwrite_replaces_the_file_with_a_static_model(tiny_run, exported, config_reads):
    before = exported.path.read_bytes()
    config_reads.clear()
    static = export(tiny_run, ExportOptions(dynamic=False, overwrite=True))
    try:
        assert config_reads == [tiny_run / "config.toml"]  # the run's config parsed once
        assert static.path == exported.path and static.check.agreement >= AGREEMENT
        predictor = OnnxPredictor.load(static.path)
        shape = predictor.session.get_inputs()[0].shape
        assert shape == [1, 3, 64, 64]
        maps = predictor.pet_probabilities([photo(50, 30, seed=4), photo(70, 90, seed=5)])  # fed one at a time
        assert [m.shape for m in maps] == [(30, 50), (90, 70)]
        assert not list(tiny_run.glob(".*.tmp"))  # the temporary file was renamed, none left
        # --int8 --static would quantize this file; a dynamic --int8 would not (earlier_export)
        assert earlier_export(tiny_run, static.metadata, ExportOptions(int8=True, dynamic=False))[0] == static.path
        assert earlier_export(tiny_run, static.metadata, ExportOptions(int8=True)) is None
    finally:
        exported.path.write_bytes(before)  # the other tests use the dynamic model


def test_export_errors_are_one_line_and_write_nothing(tiny_run, tmp_path):
    damaged = copy_run(tiny_run, tmp_path / "damaged")
    data = (damaged / "best.pth").read_bytes()
    (damaged / "best.pth").write_bytes(data[: len(data) // 3])
    (tmp_path / "afile").write_text("not a directory")
    cases = [
        (["export", str(tmp_path / "no-such-run")], "no-such-run does not exist: pass a run directory"),
        (["export", str(damaged)], "cannot be read: it is truncated"),
        (["export", str(tiny_run), "-o", str(tmp_path / "afile" / "model.onnx")], "afile is a file, not a directory"),
        (["export", str(tiny_run), "-o", "/proc/petseg-model.onnx"], "petseg-model.onnx: cannot write"),  # read-only, even for root
        (["export", str(tiny_run), "--format", "tflite", "-o", str(tmp_path / "m.x")], "--format must be one of"),
        (["export", str(tiny_run), "--format", "torchscript", "-o", str(tmp_path / "m.ts")], "TorchScript export was dropped"),
        (["export", str(tiny_run), "--image-size", "100", "-o", str(tmp_path / "m.onnx")], "multiple of 32"),
        (["export", str(tiny_run), "--opset", "11", "-o", str(tmp_path / "m.onnx")], "--opset must be at least 18"),
    ]
    for args, message in cases:
        result = invoke_cli(*args, cwd=tmp_path)
        assert result.returncode != 0, args
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (damaged / "model.onnx").exists() and not list(tmp_path.glob("m.*"))


def test_export_without_the_onnx_tools_names_the_install_command(tiny_run, tmp_path):
    code = (
        "import sys\nsys.modules['onnxscript'] = None\nfrom petseg_cli.cli.app import main\n"
        f"sys.argv = ['petseg', 'export', {str(tiny_run)!r}, '-o', 'm.onnx']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "needs onnxscript" in result.stderr and "pip install 'petseg[onnx]'" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_bad_model_files_fail_in_one_line(exported, tmp_path):
    import onnx

    bare = onnx.load(str(exported.path))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    (tmp_path / "text.onnx").write_text("not a model")
    Image.fromarray(photo(32, 32)).save(tmp_path / "one.jpg")
    for model, message in (
        ("bare.onnx", "carries no petseg metadata"),
        ("text.onnx", "cannot be loaded by onnxruntime"),
        ("missing.onnx", "missing.onnx does not exist"),
    ):
        result = invoke_cli("infer", "one.jpg", "--model-file", model, cwd=tmp_path)
        assert result.returncode in (1, 2) and message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "masks").exists()
    result = invoke_cli("infer", "one.jpg", "--model-file", "bare.onnx", "--threads", "0", cwd=tmp_path)
    assert result.returncode == 2 and "--threads must be at least 1" in result.stderr


@pytest.mark.slow
def test_a_model_that_fails_the_self_check_is_not_written(tiny_run, tmp_path):
    """fp16 cannot hold a logit of 1e5: the exported model disagrees with torch, and export says so."""
    import torch

    run = copy_run(tiny_run, tmp_path / "run")
    checkpoint = torch.load(run / "best.pth", weights_only=True)
    checkpoint["state_dict"]["head.bias"] = torch.tensor([1e5, 2e5])  # torch: pet everywhere; fp16: inf, inf
    torch.save(checkpoint, run / "best.pth")
    result = invoke_cli("export", str(run), "--fp16", "--static", cwd=tmp_path)  # static: cheaper, fails alike
    assert result.returncode == 1, result.stderr
    assert "self-check failed, nothing written" in result.stderr and "Traceback" not in result.stderr
    assert not (run / "model.onnx").exists() and not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_fp16_export_serves_masks_like_fp32(tiny_run, tmp_path):
    from petseg_cli.predict.predictor import open_predictor

    half = export(tiny_run, ExportOptions(output=tmp_path / "half.onnx", fp16=True, dynamic=False))  # static: cheaper
    assert half.metadata.precision == "fp16" and half.check.agreement >= AGREEMENT
    assert half.bytes < 0.6 * (tiny_run / "best.pth").stat().st_size  # float16 weights
    predictor = OnnxPredictor.load(half.path)
    assert predictor.session.get_inputs()[0].type == "tensor(float16)"
    images = [photo(120, 90, seed=6), photo(64, 200, seed=7)]
    served = predictor.pet_probabilities(images)
    reference = open_predictor(tiny_run, device="cpu").pet_probabilities(images)
    for a, b in zip(served, reference):
        assert agreement(pet_mask(a), pet_mask(b)) >= AGREEMENT


@pytest.mark.slow
def test_a_model_for_32_px_exports_with_dynamic_height_and_width(tiny_run, tmp_path):
    """At 32 px the deepest feature maps are 1x1, a size torch.export would pin; the export traces at a
    larger size, so the file still takes any multiple of 32 and agrees with torch at 32 px."""
    small = export(tiny_run, ExportOptions(output=tmp_path / "small.onnx", image_size=32))
    assert small.metadata.image_size == 32 and small.dynamic and small.check.agreement >= AGREEMENT
    session = OnnxPredictor.load(small.path).session
    [logits] = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 96), np.float32)})
    assert logits.shape == (1, 2, 64, 96)


def test_help_lists_export_without_importing_onnx_onnxruntime_or_numpy():
    code = (
        "import sys, runpy; sys.argv = ['petseg', '--help']\n"
        "try:\n    runpy.run_module('petseg_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript', 'numpy', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "export" in result.stdout and "Export a run's model" in result.stdout
    assert result.stdout.strip().endswith("[]"), result.stdout[-300:]


# -- the OpenVINO runtime (skipped where openvino is not installed) ---------------------------------

@pytest.mark.slow
def test_openvino_gives_onnxruntime_probabilities_in_fp32_and_close_ones_in_bf16(exported, tmp_path):
    pytest.importorskip("openvino", reason="needs the openvino extra: pip install -e '.[openvino]'")
    from petseg_cli.predict.openvino_backend import OpenVinoPredictor

    images = [photo(333, 517, seed=1), photo(64, 64, seed=2)]
    reference = OnnxPredictor.load(exported.path, threads=1)
    fp32 = OpenVinoPredictor.load(exported.path, threads=1, cache_dir=tmp_path / "blobs")
    bf16 = OpenVinoPredictor.load(exported.path, threads=1, precision="bf16")
    assert (fp32.info.backend, fp32.info.precision, bf16.info.precision) == ("openvino", "fp32", "bf16")
    assert list((tmp_path / "blobs").iterdir())  # the compiled blob, for the next start
    for tta in (False, True):
        expected = reference.pet_probabilities(images, tta=tta)
        for predictor, step in ((fp32, 1), (bf16, 8)):  # bf16 keeps 8 bits of mantissa
            for a, b in zip(predictor.pet_probabilities(images, tta=tta), expected):
                assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= step
    with pytest.raises(UsageError, match="--precision fp16"):
        OpenVinoPredictor.load(exported.path, precision="fp16")


@pytest.mark.slow
def test_infer_runtime_openvino_and_auto_say_what_ran(exported, tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="needs the openvino extra: pip install -e '.[openvino]'")
    from petseg_cli.machine import probe

    Image.fromarray(photo(48, 40)).save(tmp_path / "one.jpg")
    base = ["infer", "one.jpg", "--threads", "1", "--model-file", str(exported.path)]
    by_ov = invoke_cli(*base, "-o", "ov", "--runtime", "openvino", cwd=tmp_path)
    assert by_ov.returncode == 0 and "openvino on CPU, fp32, 1 threads" in by_ov.stderr, by_ov.stderr
    # The machine's CPU counters as /proc/stat gives them: busy (each reading 100 CPU-s on), then idle.
    readings = iter(range(0, 10**6, 100))
    monkeypatch.setattr(probe, "busy_cpu_seconds", lambda: float(next(readings)))
    busy_args = ["infer", "one.jpg", "--threads", "2", "--model-file", str(exported.path)]  # no verdict cached for 2 threads
    busy = invoke_cli(*busy_args, "-o", "busy", "--runtime", "auto", cwd=tmp_path)
    assert busy.returncode == 0 and "runtime auto: onnxruntime (fp32): not measured, the machine is busy (busy: " in busy.stderr
    monkeypatch.setattr(probe, "busy_cpu_seconds", lambda: 0.0)
    by_auto = invoke_cli(*base, "-o", "auto", "--runtime", "auto", cwd=tmp_path)
    assert by_auto.returncode == 0 and by_auto.stderr.count("runtime auto: ") == 1, by_auto.stderr
    assert f"median of 3 rounds of {PROBE_BATCH} images: onnxruntime fp32" in by_auto.stderr
    by_ort = invoke_cli(*base, "-o", "ort", cwd=tmp_path)  # the default: onnxruntime
    with Image.open(tmp_path / "ov" / "one.png") as a, Image.open(tmp_path / "ort" / "one.png") as b:
        assert agreement(np.asarray(a), np.asarray(b)) >= AGREEMENT
    assert "onnxruntime on CPUExecutionProvider" in by_ort.stderr
    wrong = invoke_cli("infer", "one.jpg", "--runtime", "tvm", "--model-file", str(exported.path), cwd=tmp_path)
    assert wrong.returncode == 2 and "--runtime must be one of" in wrong.stderr


def test_auto_without_openvino_is_onnxruntime_and_says_so_once(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    Image.fromarray(photo(48, 40)).save(tmp_path / "one.jpg")
    result = invoke_cli("infer", "one.jpg", "--runtime", "auto", "--model-file", str(exported.path), cwd=tmp_path)
    assert result.returncode == 0 and "onnxruntime on CPUExecutionProvider" in result.stderr, result.stderr
    assert result.stderr.count("OpenVINO is not installed") == 1 and "pip install 'petseg[openvino]'" in result.stderr
    forced = invoke_cli("infer", "one.jpg", "--runtime", "openvino", "--model-file", str(exported.path), "--overwrite", cwd=tmp_path)
    assert forced.returncode == 1 and "--runtime openvino needs OpenVINO" in forced.stderr


def test_serve_answers_with_openvino_and_says_so(exported, caplog):
    pytest.importorskip("openvino", reason="needs the openvino extra: pip install -e '.[openvino]'")
    from test_serve_parts import jpeg_bytes, serving, wait_ready

    from petseg_cli.predict.predictor import open_predictor

    load = lambda: open_predictor(exported.path, threads=1, runtime="openvino")  # noqa: E731
    with caplog.at_level("INFO", logger="petseg"), serving(load, batch_wait_ms=0) as client:
        wait_ready(client)
        described = client.get("/v1/model").json()
        assert (described["backend"], described["precision"], described["runtime_choice"]) == ("openvino", "fp32", None)
        assert client.post("/v1/masks", content=jpeg_bytes()).status_code == 200
    assert "on CPU with openvino fp32" in caplog.text


def test_evaluate_scores_an_exported_file_on_a_runtime_into_files_of_its_own(tiny_run, exported, tmp_path):
    """``evaluate RUN --model-file FILE --runtime R``: the file's scores, named for the file, the runtime and
    its precision, beside the run's own (torch) figures, which stay; a file of other weights is refused."""
    runtimes = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    own = invoke_cli("evaluate", str(tiny_run), cwd=tmp_path)
    assert own.returncode == 0, own.stderr
    own_file = tiny_run / "eval-test-best-original.json"
    before = own_file.read_bytes()
    for runtime in runtimes:
        result = invoke_cli("evaluate", str(tiny_run), "--model-file", str(exported.path), "--runtime", runtime, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"best weights, model.onnx on {runtime} fp32, scored at" in " ".join(result.stdout.split())  # the title
        record = json.loads((tiny_run / f"eval-test-best-original-model-{runtime}-fp32.json").read_text())
        assert (record["settings"]["runtime"], record["settings"]["model_file"]) == (runtime, str(exported.path))
        assert record["images"] == json.loads(before)["images"]
        assert abs(record["dice"] - json.loads(before)["dice"]) <= 0.003  # the bar for a runtime's test Dice
    assert own_file.read_bytes() == before  # the run's own figure is not replaced

    other = copy_run(tiny_run, tmp_path / "other")
    (other / "best.pth").write_bytes((other / "best.pth").read_bytes() + b"\0")  # other bytes: other weights
    refused = invoke_cli("evaluate", str(other), "--model-file", str(exported.path), cwd=tmp_path)
    assert refused.returncode != 0 and f"{exported.path} was not exported from {other / 'best.pth'}" in refused.stderr
    for args, says in ((["--runtime", "openvino"], "--runtime runs an exported .onnx file: pass it with --model-file"),
                       (["--model-file", str(tiny_run)], f"--model-file takes an exported .onnx file (petseg export RUN writes RUN/model.onnx), not {tiny_run}"),
                       (["--model-file", str(exported.path), "--thresholds", "0.4,0.5"], "leave out --model-file")):
        wrong = invoke_cli("evaluate", str(tiny_run), *args, cwd=tmp_path)
        assert wrong.returncode == 2 and says in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
