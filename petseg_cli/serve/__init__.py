"""``petseg serve``: masks over HTTP (Starlette + uvicorn).

    predictors.py  the seam between the service and a model: decoded RGB images in, 8-bit pet
                   probabilities out (torch from a run directory; an .onnx file plugs in beside it)
    batching.py    concurrent requests gathered into batches for one model thread
    uploads.py     request bodies to images, within the size and pixel limits
    answers.py     the answer's format (``format`` or Accept), and masks to PNG / JSON
    app.py         the ASGI application: routes, errors as JSON, one log line per request
    server.py      uvicorn: binding, startup lines, graceful stop on Ctrl-C / SIGTERM, workers
    page.html      the page at GET /

Nothing here is imported by ``petseg --help``.
"""
