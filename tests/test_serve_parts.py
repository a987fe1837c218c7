"""The parts of `petseg serve` that need no model: batching, format choice, run-length encoding,
upload decoding and its refusals, and the application's errors on a real server in this process."""

import asyncio
import contextlib
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from petseg_cli.serve.answers import choose_format, run_lengths
from petseg_cli.serve.batching import Batcher, QueueFull
from petseg_cli.serve.uploads import ClientError, decode_upload
from petseg_cli.config.settings import ServeSettings, validate_serve
from petseg_cli.base.errors import UsageError


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_submissions_are_batched_up_to_max_batch_in_order():
    seen = []

    def predict(items):
        seen.append(list(items))
        return [item * 10 for item in items]

    async def main():
        batcher = Batcher(predict, max_batch=4, wait_s=0.2)
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.stop()
        return answers, batcher

    answers, batcher = run(main())
    assert [result for result, _ in answers] == [i * 10 for i in range(10)]
    assert [len(batch) for batch in seen] == [4, 4, 2]
    assert [timing.batch_size for _, timing in answers] == [4] * 8 + [2] * 2
    assert (batcher.batches, batcher.images) == (3, 10)


class VirtualClock(asyncio.SelectorEventLoop):
    """An event loop whose clock stands still while there is work and jumps to the next timer when there
    is none: waits take no real time and their lengths are exact, so tests of them need no timing."""

    def __init__(self):
        super().__init__()
        self.now = 0.0
        self.in_threads = 0  # calls running in an executor: the clock waits for them as for work

    def time(self):
        return self.now

    def run_in_executor(self, executor, func, *args):
        future = super().run_in_executor(executor, func, *args)
        self.in_threads += 1
        future.add_done_callback(lambda _: setattr(self, "in_threads", self.in_threads - 1))
        return future

    def _run_once(self):
        timers = [handle.when() for handle in self._scheduled if not handle.cancelled()]
        if not self._ready and not self.in_threads and timers:
            self.now = max(self.now, min(timers))
        super()._run_once()


GIVE_UP_AT = 1000.0  # virtual seconds: a batcher that never answers fails here instead of hanging


def run_on_virtual_clock(main):
    """``main()`` on a ``VirtualClock``; its result and the virtual seconds it took."""

    async def guarded():
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main())
        loop.call_at(GIVE_UP_AT, task.cancel)
        try:
            return await task, loop.time()
        except asyncio.CancelledError:
            raise AssertionError(f"no answer within {GIVE_UP_AT} virtual seconds") from None

    with asyncio.Runner(loop_factory=VirtualClock) as runner:
        return runner.run(guarded())


def test_max_batch_1_gives_each_waiting_item_its_own_batch_in_order_without_waiting():
    seen = []

    def predict(items):
        seen.append(list(items))
        return items

    async def main():
        batcher = Batcher(predict, max_batch=1, wait_s=30)
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit(i) for i in range(5)))  # all five wait together
        await batcher.stop()
        return answers

    answers, took = run_on_virtual_clock(main)
    assert seen == [[0], [1], [2], [3], [4]]
    assert [result for result, _ in answers] == [0, 1, 2, 3, 4] and [t.batch_size for _, t in answers] == [1] * 5
    assert took == 0  # a full batch goes at once: the 30 s wait is never spent


def test_a_full_queue_refuses_at_once_and_takes_again_once_it_drains():
    entered, release = threading.Event(), threading.Event()

    def predict(items):
        entered.set()
        release.wait(60)
        return items

    async def main():
        batcher = Batcher(predict, max_batch=1, wait_s=0, max_queue=2)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit("a"))  # taken by the model, which waits
        while not entered.is_set():
            await asyncio.sleep(0.001)
        waiting = [asyncio.ensure_future(batcher.submit(x)) for x in "bc"]  # the queue's two places
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiting)
        with pytest.raises(QueueFull):
            await batcher.submit("d")
        release.set()
        answers = await asyncio.gather(first, *waiting)
        again = await batcher.submit("e")
        await batcher.stop()
        return [a for a, _ in answers], again[0]

    answers, again = run(main())
    assert answers == ["a", "b", "c"] and again == "e"


def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs():
    def predict(items):
        if "bad" in items:
            raise RuntimeError("model exploded")
        return [item.upper() for item in items]

    async def main():
        batcher = Batcher(predict, max_batch=8, wait_s=0.05)
        await batcher.start()
        first = await asyncio.gather(batcher.submit("bad"), batcher.submit("ok"), return_exceptions=True)
        second = await batcher.submit("fine")
        await batcher.stop()
        return first, second

    first, second = run(main())
    assert all(isinstance(answer, RuntimeError) for answer in first)
    assert second[0] == "FINE"


def test_a_lone_request_waits_exactly_the_batch_wait_and_a_later_one_joins_its_batch():
    async def main():
        loop = asyncio.get_running_loop()
        batcher = Batcher(lambda items: items, max_batch=16, wait_s=0.05)
        await batcher.start()
        lone = await batcher.submit("x")
        started = loop.time()
        first = asyncio.ensure_future(batcher.submit("y"))
        await asyncio.sleep(0.02)
        second = await batcher.submit("z")
        answers = [await first, second, lone]
        await batcher.stop()
        return answers, loop.time() - started

    ((first, second, lone), took), _ = run_on_virtual_clock(main)
    assert lone[1].batch_size == 1 and lone[1].queued_ms == pytest.approx(50)
    assert first[1].batch_size == second[1].batch_size == 2  # arrived within the first one's wait
    assert first[1].queued_ms == pytest.approx(50) and second[1].queued_ms == pytest.approx(30)
    assert took == pytest.approx(0.05)


@pytest.mark.parametrize(
    "requested, accept, expected",
    [
        (None, None, "mask"),
        (None, "*/*", "mask"),
        (None, "image/png", "mask"),
        (None, "application/json", "json"),
        (None, "text/html, application/json;q=0.9, image/png;q=0.5", "json"),
        (None, "image/png;q=0.1, application/json", "json"),
        ("overlay", "application/json", "overlay"),
        ("probs", None, "probs"),
    ],
)
def test_format_parameter_wins_then_accept_by_preference(requested, accept, expected):
    assert choose_format(requested, accept) == expected


def test_unknown_format_is_400_and_an_unservable_accept_406():
    with pytest.raises(ClientError) as bad:
        choose_format("jpeg", None)
    assert bad.value.status == 400 and "jpeg" in bad.value.message
    with pytest.raises(ClientError) as refused:
        choose_format(None, "text/html, application/json;q=0")
    assert refused.value.status == 406


def decode_rle(rle):
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for count in rle["counts"]:
        flat[position : position + count] = value
        position, value = position + count, not value
    assert position == height * width
    return flat.reshape((height, width), order="F")


@pytest.mark.parametrize("first_pixel_pet", [False, True])
def test_run_lengths_decode_back_to_the_mask_column_major_background_first(first_pixel_pet):
    rng = np.random.default_rng(3)
    mask = np.where(rng.random((7, 5)) > 0.6, 255, 0).astype(np.uint8)
    mask[0, 0] = 255 if first_pixel_pet else 0
    rle = run_lengths(mask)
    assert rle["size"] == [7, 5]
    assert (rle["counts"][0] == 0) == first_pixel_pet
    assert np.array_equal(decode_rle(rle), mask != 0)
    assert run_lengths(np.zeros((2, 3), np.uint8))["counts"] == [6]


def png_declaring(width, height):
    """A small, valid-looking PNG whose header declares ``width`` x ``height`` (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_bytes(width=40, height=30):
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"this is not a picture", 415, "not an image"),
        (jpeg_bytes()[:300], 422, "truncated"),
        (png_declaring(10_000, 10_000), 413, "10000x10000 pixels"),
        (png_declaring(100_000, 100_000), 413, "pixels"),  # past PIL's own limit too
    ],
)
def test_decode_upload_refuses_with_a_status_and_one_sentence(data, status, words):
    with pytest.raises(ClientError) as refused:
        decode_upload(data, "upload", max_pixels=50_000_000)
    assert refused.value.status == status and words in refused.value.message
    assert refused.value.message.endswith(".") and "\n" not in refused.value.message


def test_decode_upload_gives_the_photo():
    assert decode_upload(jpeg_bytes(40, 30), "upload", max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ClientError):
        decode_upload(jpeg_bytes(40, 30), "upload", max_pixels=1199)


@pytest.mark.parametrize(
    "field, value, option",
    [("port", 70000, "--port"), ("workers", 0, "--workers"), ("max_batch", 0, "--max-batch"),
     ("batch_wait_ms", -1.0, "--batch-wait-ms"), ("max_image_mb", 0.0, "--max-image-mb"), ("max_pixels", 0, "--max-pixels"),
     ("max_decodes", 0, "--max-decodes"), ("max_in_flight", 8, "--max-in-flight"), ("max_uploads", 0, "--max-uploads"),
     ("upload_timeout", 0.0, "--upload-timeout")],
)
def test_serve_settings_are_validated_naming_the_option(field, value, option):
    with pytest.raises(UsageError, match=option):
        validate_serve(ServeSettings(**{field: value}))


# -- the application on a real server in this process, with a predictor that fails ------------------

class BrokenPredictor:
    """A predictor whose model raises: what a bug or a GPU fault inside the model call looks like."""

    def __init__(self):
        from petseg_cli.predict.prediction import ModelInfo

        self.info = ModelInfo("broken", "resnet34-unet", 1, 64, None, "nowhere", "test", "cpu", "fp32")

    def pet_probabilities(self, images, tta=False):
        raise RuntimeError("secret internal detail /home/someone/model.py line 42")


@contextlib.contextmanager
def serving(load, on_fatal=lambda message: None, **settings):
    """The application for a predictor that ``load`` returns (behind a Segmenter, as serve holds it), on a real uvicorn server on 127.0.0.1 in a
    thread of this process, and an httpx client for it."""
    import httpx
    import uvicorn

    from petseg_cli import Segmenter
    from petseg_cli.serve.app import Service, create_app
    from petseg_cli.serve.server import bind, url_of

    service = Service(lambda: Segmenter(load()), ServeSettings(**settings), on_fatal=on_fatal)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=url_of(sock), timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def httpx_client_for(client):
    """Another client for the same server (an httpx client is not shared between threads)."""
    import httpx

    return httpx.Client(base_url=client.base_url, timeout=60)


def wait_ready(client):
    for _ in range(600):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("never ready")


def test_an_internal_error_is_a_500_without_traceback_and_the_service_goes_on(caplog):
    with caplog.at_level("INFO", logger="petseg"), serving(BrokenPredictor, batch_wait_ms=0) as client:
        wait_ready(client)
        answer = client.post("/v1/masks", content=jpeg_bytes())
        assert answer.status_code == 500
        assert answer.headers["content-type"] == "application/json"
        message = answer.json()["error"]
        assert "Traceback" not in answer.text and "secret" not in answer.text and message.endswith(".")
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/masks", content=b"").status_code == 400
    logged = caplog.text
    assert "secret internal detail" in logged and "Traceback" in logged  # the server's log has it
    assert "POST /v1/masks 500" in logged


def test_while_the_model_loads_healthz_answers_and_readyz_and_masks_say_503():
    loaded = threading.Event()

    def slow_load():
        loaded.wait(30)
        return BrokenPredictor()

    with serving(slow_load) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "loading"}
        refused = client.post("/v1/masks", content=jpeg_bytes())
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "loading" in refused.json()["error"]
        assert client.get("/v1/model").status_code == 503
        loaded.set()
        wait_ready(client)
        assert client.get("/v1/model").json()["name"] == "broken"


def test_a_model_that_cannot_load_stops_the_server_with_its_one_line():
    from petseg_cli.base.errors import PetsegError

    def failing_load():
        raise PetsegError("runs/x/best.pth cannot be read: it is truncated")

    told = []
    with serving(failing_load, on_fatal=told.append) as client:
        deadline = time.monotonic() + 30
        while not told and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 503
    assert told == ["runs/x/best.pth cannot be read: it is truncated"]


# -- what `petseg serve` refuses before it starts ----------------------------------------------------

def one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_serve_refuses_what_it_cannot_serve_in_one_line(tmp_path):
    import socket

    from conftest import invoke_cli, run_cli

    (tmp_path / "photos").mkdir()
    not_a_run = invoke_cli("serve", "photos", cwd=tmp_path)
    assert not_a_run.returncode == 2 and "not a petseg run" in one_error_line(not_a_run)

    missing = invoke_cli("serve", "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in one_error_line(missing)

    (tmp_path / "notes.txt").write_text("a model? no\n")
    not_a_model = invoke_cli("serve", "notes.txt", cwd=tmp_path)
    assert not_a_model.returncode == 2 and "neither a run directory nor an exported .onnx model file" in one_error_line(not_a_model)

    bad_option = invoke_cli("serve", "photos", "--max-batch", "0", cwd=tmp_path)
    assert bad_option.returncode == 2 and "--max-batch must be at least 1" in one_error_line(bad_option)

    run = tmp_path / "run"  # passes the cheap checks; the port fails before any model is loaded
    run.mkdir()
    (run / "config.toml").write_text("")
    (run / "best.pth").write_bytes(b"")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli("serve", "run", "--port", str(port), cwd=tmp_path, timeout=120)
    assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in one_error_line(busy)


@pytest.mark.slow  # starts a server process
def test_a_damaged_onnx_file_stops_the_server_in_one_error_line(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
    from conftest import run_cli

    (tmp_path / "model.onnx").write_bytes(b"not really onnx")
    result = run_cli("serve", "model.onnx", "--port", "0", cwd=tmp_path, timeout=300)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and "model.onnx" in errors[0] and "onnxruntime" in errors[0], result.stderr
