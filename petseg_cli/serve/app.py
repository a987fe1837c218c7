"""The ASGI application: routes, errors as JSON with one sentence, one log line per request.

The model loads in a thread after the server starts listening: ``/healthz`` answers at once,
``/readyz`` once the model is loaded. Requests' images go through ``Batcher`` to the model; decoding and
encoding run in Starlette's thread pool, so the event loop only moves bytes, and ``/healthz`` and
``/readyz`` answer at once whatever is being decoded or computed. ``Admission`` bounds the work taken on
(503 past it), which bounds memory. Host headers other than the service's own names get 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from importlib import resources
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from ..base.errors import PetsegError
from ..config.settings import ServeSettings
from .access_log import AccessLog, printable
from .admission import Admission, Busy
from .answers import FORMATS, asked, render
from .batching import Batcher, QueueFull
from .hosts import HostCheck, allowed_hosts
from ..predict.segmenter import Segmenter
from .uploads import MEBIBYTE, ClientError, decode_upload, discard_body, read_upload

log = logging.getLogger("petseg.serve")

PAGE = "page.html"
ROUTES = "POST /v1/masks, GET /v1/model, GET /healthz, GET /readyz and GET /"
INTERNAL_ERROR = "Internal error: the server could not answer this request, and its log has the details."
RETRY_AFTER_S = "1"


class Service:
    """The model (loaded in the background), its batcher, and the counts the endpoints report."""

    def __init__(self, load: Callable[[], Segmenter], settings: ServeSettings, on_fatal: Callable[[str], None]) -> None:
        self.load = load
        self.settings = settings
        self.on_fatal = on_fatal  # called once if the model cannot be loaded: the server should stop
        self.segmenter: Segmenter | None = None  # the Python API's, so a photo gets the same mask here as from it
        self.admission = Admission(settings.max_in_flight, settings.max_decodes, settings.max_uploads)
        self.batcher: Batcher[Any, Any] = Batcher(
            self._predict, settings.max_batch, settings.batch_wait_ms / 1000, max_queue=settings.max_in_flight
        )
        self._loading: asyncio.Task[None] | None = None

    def _predict(self, images: list[Any]) -> list[Any]:
        assert self.segmenter is not None
        return self.segmenter.probabilities(images)

    async def start(self) -> None:
        await self.batcher.start()
        self._loading = asyncio.create_task(self._load(), name="petseg-load-model")

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        await self.batcher.stop()

    async def _load(self) -> None:
        try:
            segmenter = await asyncio.to_thread(self.load)
        except PetsegError as exc:
            log.error("error: %s", exc)
            self.on_fatal(str(exc))
            return
        except Exception:
            log.exception("error: the model could not be loaded")
            self.on_fatal("the model could not be loaded")
            return
        self.segmenter = segmenter
        info, s = segmenter.info, self.settings
        parameters = f"{info.parameters:,} parameters, " if info.parameters is not None else ""
        log.info(
            "ready: %s (%s, %s%d px, %s weights, mask %s) on %s with %s %s%s; batches of up to %d images gathered within %g ms",
            info.name, info.model, parameters, info.image_size, info.weights, info.threshold_line(), info.device, info.backend,
            info.precision, ", flip TTA" if s.tta else "", s.max_batch, s.batch_wait_ms,
        )
        if info.runtime_choice:
            log.info("%s", info.runtime_choice)

    def ready_segmenter(self) -> Segmenter:
        if self.segmenter is None:
            raise ClientError(
                503, "The model is still loading; try again in a moment (GET /readyz answers 200 once it is ready).",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        return self.segmenter


def page_html() -> str:
    return resources.files(__package__).joinpath(PAGE).read_text(encoding="utf-8")


def busy(reason: str) -> ClientError:
    return ClientError(503, f"The service is busy: {reason}; try again in a moment.", headers={"Retry-After": RETRY_AFTER_S})


def upload_warning(message: str) -> None:
    log.warning("warning: %s", printable(message))


async def receive_upload(request: Request, admission: Admission, max_bytes: int, timeout_s: float) -> tuple[bytes, str]:
    """The upload's bytes and name, received in one of ``admission``'s upload slots within ``timeout_s``
    of now: past it, 408 and the connection closed (a client sending a byte a second is cut off). Without
    a slot, ``Busy`` once the body has been dropped (within the same time)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            with admission.receive():
                return await read_upload(request, max_bytes)
    except Busy:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await discard_body(request, max_bytes)
        raise
    except TimeoutError:
        raise ClientError(
            408, f"The upload did not arrive within {timeout_s:g} s, this server's limit (--upload-timeout); send it again.",
            headers={"Connection": "close"},
        ) from None


async def answer_masks(service: Service, request: Request, max_bytes: int) -> Response:
    """POST /v1/masks: admitted or 503; the upload read, decoded (at most ``max_decodes`` at once), put
    through the model in a batch, and encoded in the format asked for."""
    started = time.perf_counter()
    settings, admission = service.settings, service.admission
    ask = asked(request.query_params, request.headers.get("accept"))
    info = service.ready_segmenter().info
    threshold = info.threshold if ask.threshold is None else ask.threshold
    try:
        data, name = await receive_upload(request, admission, max_bytes, settings.upload_timeout)
        with admission.admit():
            decoding = time.perf_counter()
            async with admission.image_work:
                decode = partial(decode_upload, data, name, settings.max_pixels, upload_warning)
                image = await run_in_threadpool(decode)
            del data, decode  # the upload's bytes are not needed any more
            decode_ms = (time.perf_counter() - decoding) * 1000
            probability, timing = await service.batcher.submit(image)
            facts = {
                "run": info.name, "model": info.model, "batch_size": timing.batch_size,
                "timing_ms": {
                    "decode": round(decode_ms, 2), "queued": round(timing.queued_ms, 2),
                    "model": round(timing.model_ms, 2), "total": round((time.perf_counter() - started) * 1000, 2),
                },
            }
            async with admission.image_work:
                body, share = await run_in_threadpool(render, ask, threshold, image, probability, name, facts)
    except (Busy, QueueFull) as exc:
        raise busy(str(exc)) from None
    height, width = image.shape[:2]
    headers = {
        "X-Petseg-Foreground": f"{share:.6f}",  # as the JSON answer: the page rounds it once, not twice
        "X-Petseg-Size": f"{width}x{height}",
        "X-Petseg-Threshold": f"{threshold:g}",
        "X-Petseg-Batch-Size": str(timing.batch_size),
        "X-Petseg-Milliseconds": f"{(time.perf_counter() - started) * 1000:.1f}",
    }
    return Response(body, media_type=FORMATS[ask.format], headers=headers)


def create_app(service: Service) -> ASGIApp:
    """The application for ``service``, behind the Host check, wrapped in the per-request log."""
    settings = service.settings
    max_bytes = int(settings.max_image_mb * MEBIBYTE)
    page = page_html()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def healthz(request: Request) -> Response:
        admission = service.admission
        return JSONResponse({"status": "ok", "in_flight": admission.in_flight, "receiving": admission.receiving})

    async def readyz(request: Request) -> Response:
        if service.segmenter is None:
            return JSONResponse({"status": "loading"}, 503, headers={"Retry-After": RETRY_AFTER_S})
        return JSONResponse({"status": "ready"})

    async def model(request: Request) -> Response:
        info = service.ready_segmenter().info
        limits = {
            "max_batch": settings.max_batch, "batch_wait_ms": settings.batch_wait_ms,
            "max_image_mb": settings.max_image_mb, "max_pixels": settings.max_pixels,
            "max_in_flight": settings.max_in_flight, "max_decodes": settings.max_decodes,
            "max_uploads": settings.max_uploads, "upload_timeout": settings.upload_timeout,
        }
        served = {
            "batches": service.batcher.batches, "images": service.batcher.images, "busy": service.admission.refused,
        }
        return JSONResponse({**info.to_dict(), "limits": limits, "served": served})

    async def masks(request: Request) -> Response:
        return await answer_masks(service, request, max_bytes)

    async def client_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ClientError)
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path, allowed = request.url.path, (exc.headers or {}).get("Allow", "")
        sentences = {
            404: f"There is nothing at {path}; this service answers {ROUTES}.",
            405: f"{request.method} is not allowed on {path}; use {allowed or 'another method'}.",
        }
        message = sentences.get(exc.status_code, f"{str(exc.detail).rstrip('.')}.")
        return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": INTERNAL_ERROR}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/v1/model", model, methods=["GET"]),
            Route("/v1/masks", masks, methods=["POST"]),
        ],
        exception_handlers={ClientError: client_error, HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    hosts = allowed_hosts(settings.host, settings.allowed_hosts)
    return AccessLog(HostCheck(app, hosts))
