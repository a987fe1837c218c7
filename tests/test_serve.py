"""`petseg serve` as a user runs it: the real server in its own process on 127.0.0.1 on a free port, with a
tiny trained run, driven by a real HTTP client (httpx) and, for the page, a real headless Chromium."""

import io
import tomllib
import re
import shutil
import signal
import struct
import importlib.util
import threading
import time
import zlib
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, invoke_cli, run_cli, start_cli
from synthetic import photo

pytestmark = pytest.mark.slow  # each test starts server processes

ARTIFACTS = REPO / "test-artifacts"  # ignored by git: screenshots of the page
ORIENTATION, ROTATED_90_CW = 0x0112, 6
MAX_IMAGE_MB = 1
MAX_PIXELS = 4_000_000
READY_TIMEOUT_S = 300
LOG_LINE = re.compile(r"(\S+) (GET|POST|PUT|DELETE|HEAD|PATCH) (\S+) (\d{3}|-) (\d+) bytes ([\d.]+) ms$")


class Server:
    """``python -m petseg_cli serve RUN --port 0 ...`` in a subprocess; stderr collected line by line."""

    def __init__(self, run, *options, cwd):
        self.process = start_cli("serve", str(run), "--port", "0", *options, cwd=cwd)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for_url()
        self.client = httpx.Client(base_url=self.url, timeout=120)
        self._wait_until_ready()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def _wait_for_url(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
                if found:
                    return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError("the server did not start:\n" + "\n".join(self.lines))

    def _wait_until_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            answer = self.client.get("/readyz")
            if answer.status_code == 200:
                return
            assert answer.status_code == 503 and answer.json() == {"status": "loading"}
            assert self.process.poll() is None, "\n".join(self.lines)
            time.sleep(0.1)
        raise AssertionError("the model did not load:\n" + "\n".join(self.lines))

    def stop(self, sig=signal.SIGTERM, timeout=120):
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def log_lines(self):
        return [match for match in map(LOG_LINE.search, list(self.lines)) if match]


@pytest.fixture(scope="module")
def served_run(spread_run):
    return spread_run


@pytest.fixture(scope="module")
def server(served_run, tmp_path_factory):
    options = ["--max-image-mb", str(MAX_IMAGE_MB), "--max-pixels", str(MAX_PIXELS), "--batch-wait-ms", "50", "--max-batch", "8"]
    running = Server(served_run, *options, cwd=tmp_path_factory.mktemp("serve"))
    yield running
    assert running.stop() == 0, "\n".join(running.lines)


def write_photos(folder):
    """Three awkward photos: a tall JPEG, an EXIF-rotated JPEG and an RGBA PNG named .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(133, 217, seed=1)).save(folder / "tall.jpg", quality=92)
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATED_90_CW
    Image.fromarray(photo(90, 64, seed=2)).save(folder / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(photo(120, 80, seed=3)).convert("RGBA").save(folder / "rgba.jpg", format="PNG")
    return sorted(folder.iterdir())


def png_array(data):
    with Image.open(io.BytesIO(data)) as image:
        return image.mode, np.asarray(image)


def file_array(path):
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def decode_rle(rle):
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=np.uint8)
    position, value = 0, 0
    for count in rle["counts"]:
        flat[position : position + count] = value
        position, value = position + count, 255 - value
    return flat.reshape((height, width), order="F")


def test_masks_and_probabilities_are_the_pixels_petseg_infer_writes(server, served_run, tmp_path):
    photos = write_photos(tmp_path / "photos")
    for extra, out in (([], "masks"), (["--probs"], "probs")):
        # -b 1: each image through the model alone, as each of these sequential requests is
        done = invoke_cli("infer", str(tmp_path / "photos"), "-o", str(tmp_path / out), "--run", str(served_run), "-b", "1", *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr

    for path in photos:
        expected_mask = file_array(tmp_path / "masks" / f"{path.stem}.png")
        expected_probs = file_array(tmp_path / "probs" / f"{path.stem}.png")

        uploaded = server.client.post("/v1/masks", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.headers["content-type"] == "image/png"
        mode, mask = png_array(uploaded.content)
        assert mode == expected_mask[0] == "L"
        assert np.array_equal(mask, expected_mask[1]), path.name

        raw = server.client.post("/v1/masks?format=probs", content=path.read_bytes())
        assert raw.status_code == 200, raw.text
        mode, probs = png_array(raw.content)
        assert mode == "L" and np.array_equal(probs, expected_probs[1]), path.name
        assert len(np.unique(probs)) > 10  # a probability map, not a mask: the comparison means something
        assert set(np.unique(mask)) == {0, 255}  # pet and background

        described = server.client.post("/v1/masks", content=path.read_bytes(), headers={"Accept": "application/json"})
        assert described.status_code == 200 and described.headers["content-type"] == "application/json"
        facts = described.json()
        assert np.array_equal(decode_rle(facts["rle"]), mask)
        assert (facts["width"], facts["height"]) == (mask.shape[1], mask.shape[0])
        assert facts["foreground"] == pytest.approx((mask != 0).mean(), abs=1e-6)
        assert facts["run"] == served_run.name and facts["model"] == "resnet34-unet"
        assert set(facts["timing_ms"]) == {"decode", "queued", "model", "total"} and facts["batch_size"] >= 1

    # the EXIF-rotated photo's mask is as a viewer shows it: 64 wide, 90 tall
    assert png_array(server.client.post("/v1/masks", content=(tmp_path / "photos" / "turned.jpg").read_bytes()).content)[1].shape == (90, 64)


def test_overlay_is_the_photo_with_the_pet_tinted(server, tmp_path):
    from petseg_cli.predict.overlay import prediction_overlay

    image = photo(96, 72, seed=4)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    answer = server.client.post("/v1/masks", params={"format": "overlay"}, content=buffer.getvalue())
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    mode, overlay = png_array(answer.content)
    assert mode == "RGB" and overlay.shape == image.shape and answer.headers["x-petseg-size"] == "96x72"
    mask = png_array(server.client.post("/v1/masks", content=buffer.getvalue()).content)[1]
    share = float(answer.headers["x-petseg-foreground"])
    assert 0.05 < share < 0.95 and share == pytest.approx((mask == 255).mean(), abs=1e-4)  # pet and background both
    assert np.array_equal(overlay, np.asarray(prediction_overlay(image, mask)))  # this photo, this mask
    changed = (overlay != image).any(axis=2)
    assert changed[mask == 255].mean() > 0.9  # the pet is tinted
    assert (overlay[mask == 255][:, 0].astype(int) >= image[mask == 255][:, 0]).mean() > 0.9  # towards red


def test_model_health_and_readiness(server, served_run):
    assert server.client.get("/healthz").json()["status"] == "ok"
    assert server.client.get("/readyz").json() == {"status": "ready"}
    model = server.client.get("/v1/model").json()
    assert model["name"] == served_run.name and model["model"] == "resnet34-unet"
    assert model["parameters"] > 1_000_000 and model["image_size"] == 64
    recorded = tomllib.loads((served_run / "config.toml").read_text())["run"]["precision"]
    assert model["backend"] == "torch" and model["precision"] == recorded  # the precision the run trained in
    assert 0 <= model["val_dice"] <= 1 and model["source"] == str(served_run)
    assert model["limits"]["max_batch"] == 8 and model["limits"]["max_pixels"] == MAX_PIXELS
    assert model["threshold"] == 0.5  # the run chose none on val


def test_the_service_keeps_freed_memory_with_tcmalloc_where_installed_and_says_which(server):
    from petseg_cli.machine import allocator

    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    started = next(line for line in server.lines if "serving " in line)
    if allocator.find_tcmalloc():
        assert "libtcmalloc" in maps and "memory allocator tcmalloc" in started
    else:
        assert "libtcmalloc" not in maps and "memory allocator glibc (kept freed memory)" in started


def jpeg_bytes(width=60, height=40):
    buffer = io.BytesIO()
    Image.fromarray(photo(width, height)).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_declaring(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def too_big():
    return np.random.default_rng(0).bytes(int(1.5 * MAX_IMAGE_MB * 1024 * 1024))


def chunks_of(data, size=64 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


BAD_REQUESTS = {
    "a text file": (415, dict(method="POST", url="/v1/masks", content=b"this is not a picture\n")),
    "an empty body": (400, dict(method="POST", url="/v1/masks", content=b"")),
    "a truncated JPEG": (422, dict(method="POST", url="/v1/masks", content=jpeg_bytes()[:400])),
    "a decompression bomb": (413, dict(method="POST", url="/v1/masks", content=png_declaring(30_000, 30_000))),
    "a body over the limit": (413, dict(method="POST", url="/v1/masks", content=too_big())),
    "a chunked body over the limit": (413, dict(method="POST", url="/v1/masks", content=chunks_of(too_big()))),
    "an upload over the limit": (413, dict(method="POST", url="/v1/masks", files={"file": ("big.jpg", too_big())})),
    "multipart without the file field": (400, dict(method="POST", url="/v1/masks", files={"image": ("a.jpg", jpeg_bytes())})),
    "multipart with file as text": (400, dict(method="POST", url="/v1/masks", data={"file": "hello"}, files={"other": ("a.jpg", b"x")})),
    "an unknown format": (400, dict(method="POST", url="/v1/masks?format=gif", content=jpeg_bytes())),
    "an Accept it cannot meet": (406, dict(method="POST", url="/v1/masks", content=jpeg_bytes(), headers={"Accept": "text/html"})),
    "a GET on the upload path": (405, dict(method="GET", url="/v1/masks")),
    "a DELETE on the model": (405, dict(method="DELETE", url="/v1/model")),
    "a wrong path": (404, dict(method="POST", url="/v2/masks", content=jpeg_bytes())),
}


def test_every_bad_request_gets_its_status_and_one_sentence_and_the_service_still_answers(server):
    for what, (status, request) in BAD_REQUESTS.items():
        answer = server.client.request(**request)
        assert answer.status_code == status, f"{what}: {answer.status_code} {answer.text}"
        assert answer.headers["content-type"] == "application/json", what
        message = answer.json()["error"]
        assert message.endswith(".") and "\n" not in message and "Traceback" not in message, what
        assert message.count(". ") == 0, f"{what}: more than one sentence: {message}"
        assert server.client.get("/healthz").status_code == 200, what
    assert server.client.post("/v1/masks", content=jpeg_bytes()).status_code == 200
    assert server.process.poll() is None


def test_a_burst_of_concurrent_requests_all_succeed_in_full_batches(served_run, tmp_path):
    # Batches go to the model only when full (the wait is longer than any test): 24 requests make exactly
    # three batches of 8 whatever the order and timing of their arrival.
    photos = [jpeg_bytes(40 + 7 * i, 30 + 5 * i) for i in range(6)]
    server = Server(served_run, "--max-batch", "8", "--batch-wait-ms", "600000", "--max-in-flight", "24", cwd=tmp_path)
    try:
        def one(i):
            with httpx.Client(base_url=server.url, timeout=300) as client:
                return i, client.post("/v1/masks", content=photos[i % len(photos)])

        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(one, range(24)))
        served = server.client.get("/v1/model").json()["served"]
    finally:
        assert server.stop() == 0, "\n".join(server.lines)
    assert [answer.status_code for _, answer in answers] == [200] * 24
    assert [int(answer.headers["x-petseg-batch-size"]) for _, answer in answers] == [8] * 24
    assert (served["batches"], served["images"]) == (3, 24)
    first = {}
    for i, answer in answers:  # each photo's own size, and the same mask whatever batch it was in
        height, width = Image.open(io.BytesIO(photos[i % len(photos)])).size[::-1]
        mask = png_array(answer.content)[1]
        assert mask.shape == (height, width)
        assert np.array_equal(first.setdefault(i % len(photos), mask), mask)


def test_one_log_line_per_request_with_method_path_status_bytes_and_ms(server):
    made = [
        server.client.get("/healthz?probe=log1"),
        server.client.get("/nowhere?probe=log2"),
        server.client.post("/v1/masks?probe=log3", content=jpeg_bytes()),
        server.client.post("/v1/masks?probe=log4", content=b"junk"),
    ]
    def logged(number):
        return [m for m in server.log_lines() if f"probe=log{number}" in m.group(3)]

    deadline = time.monotonic() + 30  # each line is written once its answer has been sent
    while not all(logged(n) for n in range(1, len(made) + 1)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for number, answer in enumerate(made, start=1):
        lines = logged(number)
        assert len(lines) == 1, server.lines[-20:]
        client, method, path, status, sent, ms = lines[0].groups()
        assert method == answer.request.method and path.startswith(answer.request.url.path)
        assert int(status) == answer.status_code and int(sent) == len(answer.content) and float(ms) >= 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_answers_requests_in_flight_then_exits_0(tiny_run, tmp_path, sig):
    # a long batch wait keeps the request in flight while the signal arrives
    server = Server(tiny_run, "--batch-wait-ms", "3000", cwd=tmp_path)
    result = {}

    def request():
        with httpx.Client(base_url=server.url, timeout=300) as client:
            result["answer"] = client.post("/v1/masks", content=jpeg_bytes(64, 48))

    thread = threading.Thread(target=request)
    thread.start()
    deadline = time.monotonic() + 60
    while server.client.get("/healthz").json()["in_flight"] < 1:
        assert time.monotonic() < deadline, "the request never arrived"
        time.sleep(0.02)
    code = server.stop(sig)
    thread.join(timeout=120)
    assert code == 0, "\n".join(server.lines)
    answer = result["answer"]
    assert answer.status_code == 200 and png_array(answer.content)[1].shape == (48, 64)
    assert any(signal.Signals(sig).name in line for line in server.lines)
    assert "Traceback" not in "\n".join(server.lines)
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "healthz", timeout=5)


def test_two_workers_serve_and_stop_with_exit_0(tiny_run, tmp_path):
    server = Server(tiny_run, "--workers", "2", cwd=tmp_path)
    answers = [server.client.post("/v1/masks", content=jpeg_bytes()) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    assert server.stop() == 0, "\n".join(server.lines)


# -- the page, in a real headless browser ------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def browser(download_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def test_the_page_segments_an_uploaded_photo_in_a_real_browser(server, served_run, tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    picture = tmp_path / "my cat.jpg"
    Image.fromarray(photo(320, 240, seed=7)).save(picture, quality=92)
    expected = server.client.post("/v1/masks?format=json", content=picture.read_bytes()).json()
    expected_mask = png_array(server.client.post("/v1/masks", content=picture.read_bytes()).content)[1]
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    driver = browser(downloads)
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: served_run.name in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(picture))
        card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".result[data-state=done]"))
        overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) == 320
        share = card.find_element(By.CSS_SELECTOR, ".share")
        shown = float(share.get_attribute("data-foreground"))  # what the page got, before it rounds to 0.1%
        assert shown == pytest.approx(expected["foreground"], abs=1e-6)
        assert share.text == f"pet: {shown * 100:.1f}% of the image"
        assert "my cat.jpg" in card.text and re.search(r"320x240 px · \d+ ms", card.text)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve-page.png"))

        card.find_element(By.CSS_SELECTOR, "button.download").click()
        target = downloads / "my cat_mask.png"
        deadline = time.monotonic() + 60
        while not target.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert np.array_equal(file_array(target)[1], expected_mask)

        cut_out = card.find_element(By.CSS_SELECTOR, "button.download.cutout")
        mask_button = card.find_element(By.CSS_SELECTOR, "button.download.mask")
        assert cut_out.text == "Download cut-out" and cut_out.location["y"] == mask_button.location["y"]  # side by side
        cut_out.click()
        target = downloads / "my cat_cutout.png"
        deadline = time.monotonic() + 60
        while not target.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        mode, pixels = file_array(target)
        assert mode == "RGBA" and pixels.shape == (240, 320, 4)
        served = server.client.post("/v1/masks?format=cutout", content=picture.read_bytes())
        assert np.array_equal(pixels, png_array(served.content)[1])

        # nothing was fetched from anywhere but this server
        origins = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
        )
        assert set(origins) <= {server.url.rstrip("/")}
    finally:
        driver.quit()
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 0


def test_a_run_whose_weights_cannot_load_stops_the_server_with_one_line_and_exit_1(tiny_run, tmp_path):
    run = tmp_path / "damaged"
    shutil.copytree(tiny_run, run)
    data = (run / "best.pth").read_bytes()
    (run / "best.pth").write_bytes(data[: len(data) // 2])
    process = start_cli("serve", str(run), "--port", "0", cwd=tmp_path)
    try:
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "best.pth" in errors[0] and "truncated" in errors[0], stderr
    assert "Traceback" not in stderr


def test_an_exported_onnx_model_is_served_like_infer_model_file_serves_it(served_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
    pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
    from petseg_cli.export.command import ExportOptions, export

    model = export(served_run, ExportOptions(output=tmp_path / "model.onnx", dynamic=False)).path
    photos = write_photos(tmp_path / "photos")
    done = invoke_cli("infer", str(tmp_path / "photos"), "-o", str(tmp_path / "masks"), "--model-file", str(model), "-b", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    server = Server(model, cwd=tmp_path)
    try:
        described = server.client.get("/v1/model").json()
        assert described["backend"] == "onnxruntime" and described["source"] == str(model)
        assert described["name"] == served_run.name and described["model"] == "resnet34-unet"
        for path in photos:
            answer = server.client.post("/v1/masks", content=path.read_bytes())
            assert answer.status_code == 200, answer.text
            assert np.array_equal(png_array(answer.content)[1], file_array(tmp_path / "masks" / f"{path.stem}.png")[1])
    finally:
        assert server.stop() == 0, "\n".join(server.lines)
    if importlib.util.find_spec("openvino") is None:
        return
    server = Server(model, "--runtime", "openvino", cwd=tmp_path)  # OpenVINO crashes under tcmalloc: serve leaves it
    try:
        assert server.client.get("/v1/model").json()["backend"] == "openvino"
        answer = server.client.post("/v1/masks", content=photos[0].read_bytes())
        expected = file_array(tmp_path / "masks" / f"{photos[0].stem}.png")[1]
        assert answer.status_code == 200 and (png_array(answer.content)[1] == expected).mean() >= 0.995
        assert "memory allocator glibc" in "\n".join(server.lines)
    finally:
        assert server.stop() == 0, "\n".join(server.lines)
