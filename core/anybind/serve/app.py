"""The ASGI app: the OpenAI-compatible API (:mod:`anybind.serve.routes`) and the chat page
at ``/``, over one :class:`~anybind.serve.host.ModelHost`.

The page is our own small HTML file and script (``static/``), not Gradio: it talks to the same
``/v1/chat/completions`` stream as any program does, so there is one code path to test;
it adds no dependency (Gradio brings ~60 packages and seconds of start-up); and an answer
that interleaves text and images is a plain stream of chunks to it, not a chatbot widget's
message model.
"""

from __future__ import annotations

import json
import logging
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from anybind import __version__
from anybind.errors import AnybindError
from anybind.serve.errors import RequestError, error_body
from anybind.serve.guard import BodyLimit
from anybind.serve.host import ModelHost
from anybind.serve.routes import router

log = logging.getLogger("anybind.serve")
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


def create_app(host: ModelHost) -> FastAPI:
    app = FastAPI(title="anybind", version=__version__, docs_url="/docs", redoc_url=None)
    app.state.host = host
    app.include_router(router)
    app.add_middleware(BodyLimit, max_upload_bytes=host.settings.max_upload_bytes)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status,
                            headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(AnybindError)
    async def anybind_error(request: Request, exc: AnybindError):  # a user's input the library refused
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail), code=str(exc.status_code)), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(f"invalid request: {exc.errors()}"), status_code=400)

    @app.get("/", include_in_schema=False)
    async def page():
        # "<" escaped so no value can close the <script> element it sits in
        config = json.dumps({"model": host.model_id, **host.describe()}).replace("<", "\\u003c")
        text = resources.files("anybind.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(text.replace("{{config}}", config).replace("{{version}}", __version__))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:
            return JSONResponse(error_body(f"no such file: {name}"), status_code=404)
        data = resources.files("anybind.serve").joinpath(f"static/{name}").read_bytes()
        return Response(data, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    return app
