"""``petseg serve``: masks over HTTP (Starlette + uvicorn).

The model is a ``Segmenter``, the Python API's (over petseg's one predictor: a run directory on torch, an
.onnx file on onnxruntime or OpenVINO), so a served mask has the pixels of the one ``petseg infer`` writes.

    batching.py    concurrent requests gathered into batches for one model thread
    uploads.py     request bodies to images, within the size and pixel limits
    answers.py     the answer's format (``format`` or Accept), and masks to PNG / JSON
    app.py         the ASGI application: routes, errors as JSON, one log line per request
    server.py      uvicorn: binding, startup lines, graceful stop on Ctrl-C / SIGTERM, workers
    page.html      the page at GET /

Nothing here is imported by ``petseg --help``.
"""
