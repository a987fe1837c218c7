"""Running the service under uvicorn: bind, say where, serve, and stop gracefully.

Ctrl-C or SIGTERM: the listening socket closes, requests in flight are answered, then the process
exits 0 (a second Ctrl-C stops at once). Importing this module needs none of the serving packages: ``serve``
names the missing ones in one line. With ``workers`` > 1, uvicorn's supervisor starts that many
processes on the one socket, each loading its own model.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ..base.console import FittedFormatter
from ..base.errors import PetsegError

# What serving needs beyond the model's runtime, by pip name: module names (python-multipart's changed).
SERVING_PACKAGES = {
    "starlette": ("starlette",), "uvicorn": ("uvicorn",), "python-multipart": ("python_multipart", "multipart"),
    "numpy": ("numpy",), "pillow": ("PIL",),
}
SERVE_ONNX_EXTRA = "petseg's serve-onnx extra lists all that serving an .onnx file needs"


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked (None in sys.modules) or broken
        return False


def require_serving_packages() -> None:
    """One line naming what to install, as export gives, instead of a ModuleNotFoundError."""
    missing = [name for name, modules in SERVING_PACKAGES.items() if not any(map(_installed, modules))]
    if missing:
        raise PetsegError(f"petseg serve needs {', '.join(missing)}: pip install {' '.join(missing)}  ({SERVE_ONNX_EXTRA})")


from ..machine import allocator
from ..config.settings import ServeSettings, validate_serve

log = logging.getLogger("petseg.serve")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STARTUP_FAILURE = 3  # uvicorn's exit code for a worker that cannot start; its supervisor then stops
FORCED_EXIT_CODE = 130
# A signal delivered to the server's thread runs its handler once the main thread wakes: at most this late.
SIGNAL_TICK_S = 0.1
# How the supervisor's workers learn what to serve (they are fresh interpreters).
WORKER_ENVIRONMENT = "PETSEG_SERVE_WORKER"
WORKER_APP = f"{__name__}:worker_app"
LOG_FORMAT = "%(asctime)s %(message)s"
BACKLOG = 2048  # uvicorn's default


def configure_logging() -> None:
    """petseg's lines on stderr; uvicorn's own only for warnings and errors (petseg logs each request)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FittedFormatter(LOG_FORMAT, sys.stderr))
    petseg = logging.getLogger("petseg")
    petseg.handlers[:] = [handler]
    petseg.setLevel(logging.INFO)
    petseg.propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uvicorn_log = logging.getLogger("uvicorn")
    uvicorn_log.handlers[:] = [handler]
    uvicorn_log.propagate = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``; one clear line when that is impossible."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(BACKLOG)  # from now on connections wait in the backlog until uvicorn takes them
        except OSError:
            sock.close()
            raise
    except socket.gaierror as exc:
        raise PetsegError(f"cannot listen on {host}:{port}: {exc.strerror} (--host)", exit_code=2) from None
    except OSError as exc:
        raise PetsegError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (--host, --port)") from None
    sock.set_inheritable(True)  # for the workers
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def announce(source: Path, sock: socket.socket, settings: ServeSettings) -> None:
    log.info(
        "serving %s at %s (%d worker%s, memory allocator %s; Ctrl-C to stop)",
        source, url_of(sock), settings.workers, "s" * (settings.workers > 1), allocator.describe(),
    )
    if not is_loopback(settings.host):
        log.info(
            "note: listening on %s, so other machines on the network can reach this service (the default, 127.0.0.1, answers this machine only)",
            settings.host,
        )
    from .hosts import allowed_hosts

    log.info(
        "answering Host headers %s (others get 400; serve.allowed_hosts or --allow-host adds names)",
        ", ".join(allowed_hosts(settings.host, settings.allowed_hosts)),
    )


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    return {
        "log_config": None, "access_log": False, "lifespan": "on", "server_header": False,
        "timeout_graceful_shutdown": None,  # in flight means answered, however long the model takes
    }


class GracefulServer:
    """uvicorn's Server, run in a thread of its own while this thread (the main one: signals reach only
    it) handles Ctrl-C and SIGTERM: the first stops taking requests and answers those in flight, a second
    Ctrl-C stops at once. In any thread but the main one uvicorn leaves signals alone, so nothing of
    uvicorn's is overridden (in the main one it re-raises the signal once stopped, and the process would
    die of it instead of exiting 0). The handlers run here, never in the middle of the server's own work:
    a handler that interrupted a log line being written could not write its own (a reentrant write to
    stderr raises) and the signal was lost."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(config)
        self.exit_code = 0

    def run(self, sockets: list[socket.socket]) -> None:
        thread = threading.Thread(target=self.server.run, kwargs={"sockets": sockets}, name="petseg-serve")
        handling = threading.current_thread() is threading.main_thread()
        original = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS} if handling else {}
        try:
            thread.start()
            while thread.is_alive():  # woken each tick: a signal the server's thread took is handled here too
                thread.join(SIGNAL_TICK_S)
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.server.should_exit and sig == signal.SIGINT:
            log.info("stopping at once")
            self.exit_code = FORCED_EXIT_CODE
            self.server.force_exit = True
        elif not self.server.should_exit:
            log.info("%s: no new requests; answering those in flight, then exiting", signal.Signals(sig).name)
            self.server.should_exit = True

    def fatal(self, message: str) -> None:
        """Stop with exit code 1 (the model could not be loaded; ``message`` has been logged)."""
        self.exit_code = 1
        self.server.should_exit = True


def threads_per_worker(workers: int) -> int | None:
    """With several workers, each model computes with its share of the cores; alone, the library's default."""
    if workers <= 1:
        return None
    from ..machine.devices import usable_cores

    return max(1, usable_cores() // workers)


def worker_app() -> Any:
    """The application of one supervised worker, from what ``serve`` put in the environment."""
    require_serving_packages()
    from ..predict.segmenter import Segmenter
    from .app import Service, create_app

    configure_logging()
    allocator.keep_freed_memory()
    spec = json.loads(os.environ[WORKER_ENVIRONMENT])
    settings = ServeSettings(**spec["settings"])
    source = Path(spec["source"])

    def load() -> Any:
        return Segmenter.load(
            source, weights=settings.weights, device=settings.device, threads=threads_per_worker(settings.workers),
            tta=settings.tta, runtime=settings.runtime,
        )

    def fatal(message: str) -> None:
        logging.shutdown()
        os._exit(STARTUP_FAILURE)  # the supervisor stops instead of restarting a worker that cannot load

    return create_app(Service(load, settings, fatal))


def serve(source: Path, settings: ServeSettings) -> int:
    """Serve ``source`` (a run directory or a model file) until Ctrl-C or SIGTERM; the exit code."""
    require_serving_packages()  # one line naming them, before an import below fails with a traceback
    import uvicorn

    from ..predict.predictor import is_model_file, open_source
    from ..predict.segmenter import Segmenter
    from ..predict.runtime_probe import ONNXRUNTIME
    from .app import Service, create_app

    validate_serve(settings)
    opened = open_source(source, settings.weights)  # a run's config read once, here, for the one worker
    if is_model_file(source) and settings.runtime != ONNXRUNTIME:
        allocator.leave_tcmalloc(f"--runtime {settings.runtime} may run OpenVINO, which crashes under tcmalloc")
    allocator.keep_freed_memory()  # where tcmalloc is not preloaded
    configure_logging()
    sock = bind(settings.host, settings.port)
    announce(source, sock, settings)
    if settings.workers > 1:
        return _serve_workers(source, settings, sock)

    holder: dict[str, Any] = {}
    service = Service(
        lambda: Segmenter.load(opened, weights=settings.weights, device=settings.device, tta=settings.tta, runtime=settings.runtime),
        settings, lambda m: holder["server"].fatal(m),
    )
    config = uvicorn.Config(create_app(service), **uvicorn_options(settings))
    server = holder["server"] = GracefulServer(config)
    server.run(sockets=[sock])
    log.info("stopped")
    return server.exit_code


def _serve_workers(source: Path, settings: ServeSettings, sock: socket.socket) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    os.environ[WORKER_ENVIRONMENT] = json.dumps({"source": str(source), "settings": dataclasses.asdict(settings)})
    config = uvicorn.Config(WORKER_APP, factory=True, workers=settings.workers, **uvicorn_options(settings))
    supervisor = Multiprocess(config, sockets=[sock])
    supervisor.run()
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    log.info("stopped")
    return 1 if failed else 0
