"""A stop signal that arrives while the server is writing a log line still stops it. The server runs in a
subprocess's main thread (signals reach only that thread) with its stderr on a writer that raises SIGTERM
in the middle of writing the access line of GET /healthz: deterministic, no timing."""

import os
import subprocess
import sys

from conftest import REPO

SERVER = r'''
import io, signal, sys, threading, time

class SignalsMidWrite(io.RawIOBase):
    def __init__(self, out):
        self.out, self.sent = out, False
    def writable(self):
        return True
    def write(self, data):
        if not self.sent and b"GET /healthz" in bytes(data):
            self.sent = True
            signal.raise_signal(signal.SIGTERM)  # Python runs the handler before this write returns
        return self.out.write(bytes(data))

# as Python's own stderr is: line-buffered, so each line is flushed while the writer's lock is held
sys.stderr = io.TextIOWrapper(io.BufferedWriter(SignalsMidWrite(sys.__stderr__.buffer)), line_buffering=True)
import httpx, uvicorn
from petseg_cli import Segmenter
from petseg_cli.serve.app import Service, create_app
from petseg_cli.serve.server import GracefulServer, bind, configure_logging, url_of
from petseg_cli.config.settings import ServeSettings
from test_serve_hostile import GatedPredictor

configure_logging()
sock = bind("127.0.0.1", 0)
app = create_app(Service(lambda: Segmenter(GatedPredictor()), ServeSettings(), lambda message: None))
server = GracefulServer(uvicorn.Config(app, log_config=None, access_log=False))

def healthz():
    for _ in range(600):
        try:
            httpx.get(url_of(sock) + "healthz", timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.05)

threading.Thread(target=healthz, daemon=True).start()
server.run(sockets=[sock])
print("stopped", server.exit_code, flush=True)
'''

LOST_AFTER_S = 60  # the signal was lost: the server would run on until killed


def test_sigterm_during_a_log_line_stops_the_server_and_the_log_stays_clean():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    try:
        result = subprocess.run(
            [sys.executable, "-c", SERVER], capture_output=True, text=True, timeout=LOST_AFTER_S, env=env, cwd=REPO
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"SIGTERM was lost: the server did not stop\n{exc.stderr}") from None
    assert result.returncode == 0 and result.stdout == "stopped 0\n", result.stderr
    assert "Logging error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "SIGTERM: no new requests" in result.stderr


def test_nothing_of_uvicorn_s_server_is_overridden():
    """petseg runs uvicorn's Server as it is (in a thread, handling the signals itself): an upgrade of
    uvicorn cannot change a method petseg replaced."""
    import uvicorn

    from petseg_cli.serve import server

    subclasses = [name for name, kind in vars(server).items() if isinstance(kind, type) and issubclass(kind, uvicorn.Server)]
    assert subclasses == []


def test_a_first_stop_signal_drains_and_a_second_ctrl_c_stops_at_once():
    import signal

    import uvicorn

    from petseg_cli.serve.server import FORCED_EXIT_CODE, GracefulServer

    server = GracefulServer(uvicorn.Config(app=None))
    server.handle_exit(signal.SIGTERM, None)
    assert server.server.should_exit and not server.server.force_exit and server.exit_code == 0
    server.handle_exit(signal.SIGTERM, None)  # another SIGTERM changes nothing
    assert not server.server.force_exit
    server.handle_exit(signal.SIGINT, None)
    assert server.server.force_exit and server.exit_code == FORCED_EXIT_CODE
