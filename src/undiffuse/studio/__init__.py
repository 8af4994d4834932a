"""undiffuse studio: a local web app to generate images, watch every step, recall any image and follow training.

    undiffuse studio [--host 127.0.0.1] [--port 7860] [--runs runs] [--out out/studio]

A Starlette app served by uvicorn; one worker thread runs the queued jobs one at a time. Modules:
``catalogue`` (models), ``spec`` (a job's request, checked), ``jobs`` (queue and worker), ``runner`` (one job:
sampling, previews, PNGs), ``history`` (the gallery on disk), ``dashboard`` (training runs), ``app`` (HTTP routes),
``server`` (start and stop), ``limits`` (caps), ``static/`` (the page).
"""

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
