"""`petseg serve` against hostile requests, in-process on a real uvicorn server: foreign Host headers get
400, control characters in a request never start a log line, a full service answers 503 with Retry-After
at once while /healthz still answers, and damaged photos get 200 (broken metadata) or 422 (unreadable)."""

import threading

import numpy as np
import pytest

from metadata_fuzz import jpeg_with_broken_exif, photo
from petseg_cli.base.errors import UsageError
from petseg_cli.serve.access_log import printable
from petseg_cli.serve.hosts import allowed_hosts
from petseg_cli.config.settings import ServeSettings, validate_serve
from conftest import REPO as REPO_ROOT
from test_serve_parts import jpeg_bytes, serving, wait_ready


class GatedPredictor:
    """Gives every pixel probability 200 (pet), once ``gate`` is open; counts the images it was given."""

    def __init__(self, gate=None):
        from petseg_cli.predict.prediction import ModelInfo

        self.info = ModelInfo("gated", "resnet34-unet", 1, 64, None, "nowhere", "test", "cpu", "fp32")
        self.gate = gate or threading.Event()
        self.entered = threading.Event()
        if gate is None:
            self.gate.set()

    def pet_probabilities(self, images, tta=False):
        self.entered.set()
        assert self.gate.wait(60)
        return [np.full(image.shape[:2], 200, np.uint8) for image in images]


@pytest.mark.parametrize(
    ("host", "status"),
    [("evil.example", 400), ("localhost", 200), ("127.0.0.1", 200), ("[::1]", 200), ("pets.example", 200),
     ("pets.example.evil", 400), ("127.0.0.1.evil.example", 400)],
)
def test_only_the_service_s_own_host_names_are_answered(host, status):
    with serving(GatedPredictor, allowed_hosts=["pets.example"]) as client:
        port = client.base_url.port
        answer = client.get("/healthz", headers={"Host": f"{host}:{port}"})
        assert answer.status_code == status, answer.text
        if status == 400:  # the body every other 4xx has: JSON, one sentence
            other = client.get("/nothing-here")
            assert other.status_code == 404 and answer.headers["content-type"] == other.headers["content-type"]
            assert list(answer.json()) == ["error"] and answer.json()["error"].endswith("."), answer.text


def test_allowed_hosts_come_from_the_bound_address_and_the_setting():
    assert allowed_hosts("127.0.0.1", []) == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("::1", []) == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("192.0.2.7", ["Pets.Example", "*.lan"]) == [
        "localhost", "127.0.0.1", "[::1]", "192.0.2.7", "pets.example", "*.lan",
    ]
    assert "[2001:db8::1]" in allowed_hosts("2001:db8::1", [])


@pytest.mark.parametrize("bad", ["", "a b", "http://x", "*x.example", "a.*.example", "user@host"])
def test_an_allowed_host_that_is_no_host_name_is_refused_at_start_up(bad):
    with pytest.raises(UsageError, match="serve.allowed_hosts"):
        validate_serve(ServeSettings(allowed_hosts=[bad]))


def test_a_newline_in_the_path_or_query_never_starts_a_log_line(caplog):
    with caplog.at_level("INFO", logger="petseg"), serving(GatedPredictor) as client:
        assert client.get("/%0Afake%20log%20line").status_code == 404
        assert client.get("/healthz?x=%0D%0Aforged%1B[31m").status_code == 200
    lines = caplog.text.splitlines()
    assert not [line for line in lines if line.startswith(("fake", "forged"))], lines
    assert any("GET /\\x0afake log line 404" in record.getMessage() for record in caplog.records)
    assert any("x=%0D%0Aforged%1B[31m" in record.getMessage() for record in caplog.records)  # the query stays encoded
    assert printable("a\nb\rc\x1bd\u2028e\x85") == "a\\x0ab\\x0dc\\x1bd\\u2028e\\x85"


def test_a_full_service_answers_503_with_retry_after_at_once_and_healthz_still_answers():
    gate = threading.Event()
    predictor = GatedPredictor(gate)
    with serving(lambda: predictor, max_in_flight=2, max_batch=1, max_decodes=1, batch_wait_ms=0) as client:
        wait_ready(client)
        results = {}

        def post(key):
            from test_serve_parts import httpx_client_for

            with httpx_client_for(client) as own:
                results[key] = own.post("/v1/masks", content=jpeg_bytes())

        held = [threading.Thread(target=post, args=(i,)) for i in range(2)]
        for thread in held:
            thread.start()
        while client.get("/healthz").json()["in_flight"] < 2:  # both admitted; the model holds the first
            assert all(thread.is_alive() for thread in held)
        refused = client.post("/v1/masks", content=jpeg_bytes())
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "busy" in refused.json()["error"] and "--max-in-flight" in refused.json()["error"]
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        gate.set()
        for thread in held:
            thread.join(60)
        assert [results[i].status_code for i in range(2)] == [200, 200]
        assert client.post("/v1/masks", content=jpeg_bytes()).status_code == 200
        assert client.get("/v1/model").json()["served"]["busy"] == 1


def test_a_broken_exif_photo_gets_its_mask_and_an_unreadable_file_422(caplog):
    data = jpeg_with_broken_exif(photo(np.random.default_rng(5), 30, 40))
    with caplog.at_level("INFO", logger="petseg"), serving(GatedPredictor) as client:
        wait_ready(client)
        answer = client.post("/v1/masks", files={"file": ("broken\nname.jpg", data)})
        assert answer.status_code == 200 and answer.headers["x-petseg-size"] == "40x30"
        unreadable = client.post("/v1/masks", content=data[: len(data) // 3])
        assert unreadable.status_code == 422 and unreadable.json()["error"].startswith("The image is damaged")
    warnings = [r.getMessage() for r in caplog.records if "EXIF block is damaged" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]


def black_png(side):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_a_burst_of_large_uploads_gets_200_or_503_only_and_the_service_answers_after():
    """serve_abuse.py at a small scale, without timing: 16 concurrent uploads of a 2000x2000 PNG while the
    model holds the first: exactly max_in_flight (4) are answered 200, the other 12 get 503 at once, no
    connection fails, /healthz answers while every slot is taken; a 7000x7000 PNG is refused from its
    header (413) under the default pixel limit."""
    from collections import Counter

    from test_serve_parts import httpx_client_for

    gate = threading.Event()
    predictor = GatedPredictor(gate)
    body = black_png(2000)
    statuses, failures, lock = Counter(), [], threading.Lock()
    with serving(lambda: predictor, max_in_flight=4, max_batch=4, max_pixels=5_000_000) as client:
        wait_ready(client)

        def upload():
            with httpx_client_for(client) as own:
                try:
                    status = own.post("/v1/masks", content=body).status_code
                except Exception as exc:  # a reset or dropped connection: what must never happen
                    failures.append(repr(exc))
                    return
                with lock:
                    statuses[status] += 1

        threads = [threading.Thread(target=upload) for _ in range(16)]
        for thread in threads:
            thread.start()
        while statuses[503] + len(failures) < 12 or client.get("/healthz").json()["in_flight"] < 4:
            assert client.get("/healthz").status_code == 200
        gate.set()
        for thread in threads:
            thread.join(60)
        assert failures == [] and statuses == Counter({200: 4, 503: 12})
        assert client.post("/v1/masks", content=jpeg_bytes()).status_code == 200
    with serving(GatedPredictor) as client:
        wait_ready(client)
        huge = client.post("/v1/masks", content=black_png(7000))
        assert huge.status_code == 413 and "--max-pixels" in huge.json()["error"]


SLOW_CLIENTS = 16  # the default --max-in-flight: before the upload timeout, these took every slot
SLOW_HEAD = (b"POST /v1/masks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
             b"Content-Length: 100000\r\n\r\n")


def read_until_closed(sock):
    """The answer, up to the server's close. A close with our last byte unread is a reset, which comes
    after the data the server sent before it (the kernel hands over what it received first)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def a_byte_a_second_until_answered(sockets, seconds):
    """Send each socket a byte a second until the server answers it and closes the connection (at most
    ``seconds`` ticks): each answer's bytes and the second it came, None for a socket never answered."""
    import select
    import time

    answers, started = [None] * len(sockets), time.monotonic()
    for _ in range(int(seconds)):
        waiting = [s for s, answer in zip(sockets, answers) if answer is None]
        if not waiting:
            break
        for s in waiting:
            try:
                s.sendall(b"\x00")
            except OSError:  # closed by the server: its answer is read below
                pass
        readable, _, _ = select.select(waiting, [], [], 1.0)
        for s in readable:
            answers[sockets.index(s)] = (read_until_closed(s), time.monotonic() - started)
    return answers


@pytest.mark.slow  # waits out its 3 s upload timeout
def test_slow_uploads_hold_no_slot_of_the_work_and_are_cut_off_after_the_upload_timeout():
    """16 clients sending an upload at a byte a second (real sockets): a photo sent meanwhile gets its
    mask within 2 s, and each slow client gets 408 and a closed connection once the upload timeout,
    here 3 s, has passed."""
    import socket
    import time

    timeout = 3.0
    with serving(GatedPredictor, upload_timeout=timeout) as client:
        wait_ready(client)
        address = (client.base_url.host, client.base_url.port)
        slow = [socket.create_connection(address, timeout=30) for _ in range(SLOW_CLIENTS)]
        try:
            began = time.monotonic()
            for s in slow:
                s.sendall(SLOW_HEAD + b"\x00")
            for _ in range(500):
                if client.get("/healthz").json()["receiving"] == SLOW_CLIENTS:
                    break
            else:
                raise AssertionError("the slow uploads never all arrived at the server")
            sent = time.monotonic()
            photo = client.post("/v1/masks", content=jpeg_bytes())
            assert photo.status_code == 200 and time.monotonic() - sent < 2.0
            answers = a_byte_a_second_until_answered(slow, seconds=timeout + 20)
            cut_off_after = time.monotonic() - began
        finally:
            for s in slow:
                s.close()
        assert all(answer is not None for answer in answers), "a slow client was never cut off"
        for received, _ in answers:
            assert received.startswith(b"HTTP/1.1 408 "), received[:200]
            assert b"--upload-timeout" in received and b"connection: close" in received.lower()
        assert cut_off_after >= timeout
        assert client.get("/healthz").json() == {"status": "ok", "in_flight": 0, "receiving": 0}


def test_serve_help_states_the_upload_timeout():
    from conftest import invoke_cli
    from petseg_cli.config.settings import DEFAULTS

    result = invoke_cli("serve", "--help", cwd=REPO_ROOT)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--upload-timeout" in text and f"within this many seconds: 408, connection closed. [default: {DEFAULTS.serve.upload_timeout:g}]" in text
