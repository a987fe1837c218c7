"""``petseg serve``'s options: the [serve] settings, flag by flag. Registered on the app by cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import CONFIG, RUNTIME, on_off, run_command
from ..config.settings import DEFAULTS, load_settings

sv = DEFAULTS.serve


def serve(
    source: Path = typer.Argument(
        ..., metavar="RUN|MODEL.onnx", help="A run directory or an exported .onnx model file.", show_default=False,
    ),
    host: Optional[str] = typer.Option(
        None, "--host", help=f"Address to listen on; any but a loopback address lets other machines in (default: {sv.host})."
    ),
    port: Optional[int] = typer.Option(None, "--port", help=f"TCP port; 0 = any free port, which the startup line names (default: {sv.port})."),
    workers: Optional[int] = typer.Option(None, "--workers", help=f"Server processes, each with its own copy of the model (default: {sv.workers})."),
    device: Optional[str] = typer.Option(None, "--device", help=f"auto, cpu, cuda or cuda:N (default: {sv.device})."),
    weights: Optional[str] = typer.Option(None, "--weights", help=f"A run's best or last weights (default: {sv.weights})."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help=f"Average each image's and its flip's softmax: twice the work per image, for +0.003 val Dice in the recipe ablation (default: {on_off(sv.tta)})."),
    max_image_mb: Optional[float] = typer.Option(
        None, "--max-image-mb", help=f"Refuse uploads larger than this many MiB with 413 (default: {sv.max_image_mb:g})."
    ),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", help=f"Refuse images declaring more pixels than this, before decoding them (default: {sv.max_pixels:,})."
    ),
    max_batch: Optional[int] = typer.Option(
        None, "--max-batch", help=f"Run at most this many concurrent requests' images through the model together; 1 = no batching (default: {sv.max_batch})."
    ),
    batch_wait_ms: Optional[float] = typer.Option(
        None, "--batch-wait-ms", help=f"Wait at most this long after a request for others to batch with it (default: {sv.batch_wait_ms:g})."
    ),
    max_in_flight: Optional[int] = typer.Option(
        None, "--max-in-flight", help=f"Work on at most this many requests at once; more get 503 with Retry-After (default: {sv.max_in_flight})."
    ),
    max_decodes: Optional[int] = typer.Option(
        None, "--max-decodes", help=f"Decode or encode at most this many images at once (default: {sv.max_decodes})."
    ),
    max_uploads: Optional[int] = typer.Option(
        None, "--max-uploads", help=f"Receive at most this many uploads at once; more get 503 with Retry-After (default: {sv.max_uploads})."
    ),
    upload_timeout: Optional[float] = typer.Option(
        None, "--upload-timeout", metavar="SECONDS",
        help=f"Cut off a client whose upload has not arrived whole within this many seconds: 408, connection closed (default: {sv.upload_timeout:g}).",
    ),
    allow_host: Optional[List[str]] = typer.Option(
        None, "--allow-host", metavar="HOST", help="Also answer requests whose Host header is this name (repeatable; * for any); others get 400."
    ),
    runtime: Optional[str] = RUNTIME,
    config: Optional[Path] = CONFIG,
) -> None:
    """Serve masks over HTTP, with a page to try it.

    POST /v1/masks answers (?format=) a mask, probabilities, an overlay, a cut-out, a COCO entry or JSON;
    GET /v1/model, /healthz and /readyz describe the service; GET / is the page."""
    given = {
        "host": host, "port": port, "workers": workers, "device": device, "weights": weights, "tta": tta,
        "max_image_mb": max_image_mb, "max_pixels": max_pixels, "max_batch": max_batch, "batch_wait_ms": batch_wait_ms,
        "max_in_flight": max_in_flight, "max_decodes": max_decodes, "max_uploads": max_uploads,
        "upload_timeout": upload_timeout, "allowed_hosts": allow_host or None, "runtime": runtime,
    }

    def go():
        from ..serve.server import serve as serve_source

        return serve_source(source, load_settings(config, {"serve": given}).serve)

    raise typer.Exit(run_command(go))


