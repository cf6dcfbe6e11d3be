"""The OpenAI-compatible API: chat completions (streamed or whole), embeddings, models, and
retrieval from the server's index; ``/health`` for probes. Every route but the page checks
the API key when the server has one."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from anybind.chat.conversation import ContextOverflow
from anybind.chat.events import SamplingOptions
from anybind.errors import AnybindError
from anybind.serve.chunks import Completion
from anybind.serve.errors import RequestError, bad_request, error_body
from anybind.serve.guard import check_key
from anybind.serve.host import ModelHost
from anybind.serve.messages import conversation, embedding_inputs
from anybind.serve.uploads import RequestFiles

log = logging.getLogger("anybind.serve")


def host_of(request: Request) -> ModelHost:
    return request.app.state.host


def require_key(request: Request) -> None:
    check_key(host_of(request).settings.api_key, request.headers.get("authorization"))


router = APIRouter(dependencies=[Depends(require_key)])


async def read_json(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def check_model_name(host: ModelHost, body: dict) -> None:
    name = body.get("model")
    if name not in (None, host.model_id, "anybind"):
        raise RequestError(404, f"model {name!r} is not served here; this server serves {host.model_id!r} "
                                f"(also accepted as 'anybind')", code="model_not_found", param="model")


def _number(body: dict, key: str, default, kind, low, high, low_open: bool = False):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise bad_request(f"{key}: expected {'an integer' if kind is int else 'a number'}", key)
    if value < low or value > high or (low_open and value == low):
        raise bad_request(f"{key}: {value} is outside {'(' if low_open else '['}{low}, {high}]", key)
    return kind(value)


def sampling(host: ModelHost, body: dict) -> SamplingOptions:
    """Sampling options from a request. With no temperature the answer is greedy (0), the
    setting the anybind models are evaluated with, not OpenAI's default of 1."""
    if body.get("n", 1) != 1:
        raise bad_request("n: only one choice per request is supported", "n")
    context = host.chat.backbone.max_context
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return SamplingOptions(
        max_new_tokens=_number(body, key, min(host.settings.max_tokens, context // 2), int, 1, context - 1),
        temperature=_number(body, "temperature", 0.0, float, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0, low_open=True),
        seed=_number(body, "seed", None, int, -2**63, 2**63 - 1))


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    host = host_of(request)
    body = await read_json(request)
    check_model_name(host, body)
    options = sampling(host, body)
    draw = body.get("anybind", {}).get("draw", True) if isinstance(body.get("anybind"), dict) else True

    def read_conversation():
        with RequestFiles(host.settings.max_upload_bytes) as files:  # attachments are embedded, then deleted
            return conversation(host.chat, body.get("messages"), files)

    turns = await run_in_threadpool(host.run, read_conversation)

    def answer():
        return host.chat.respond(turns, options=options, draw=bool(draw) and host.settings.max_images > 0,
                                 max_images=host.settings.max_images, image_steps=host.settings.image_steps)

    completion, stop = Completion(host.model_id), threading.Event()
    events = host.stream(answer, request.is_disconnected, stop)
    try:  # the first event before any byte is sent: a conversation too long for the context is a 400
        first = await anext(events, None)
    except ContextOverflow as exc:
        stop.set()
        raise bad_request(str(exc), "messages", code="context_length_exceeded") from None
    except BaseException:
        stop.set()
        raise
    events = _after(first, events)
    if not body.get("stream"):
        try:
            async for event in events:
                completion.push(event)
        finally:
            stop.set()
        return JSONResponse(completion.whole())
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(sse(completion, events, stop, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _after(first, events):
    """``first`` (read ahead; ``None`` when there was none), then the rest of ``events``."""
    if first is not None:
        yield first
        async for event in events:
            yield event


async def sse(completion: Completion, events, stop: threading.Event, include_usage: bool):
    """The answer as server-sent events: the role, each event's chunk, the finish, maybe the
    usage, then ``[DONE]``; a failure after the headers went out is an ``error`` event."""
    try:
        yield _sse(completion.first())
        async for event in events:
            chunk = completion.push(event)
            if chunk is not None:
                yield _sse(chunk)
        yield _sse(completion.last())
        if include_usage:
            yield _sse(completion.usage_chunk())
    except AnybindError as exc:
        yield _sse(error_body(str(exc), code="generation_failed"))
    except Exception as exc:  # noqa: BLE001 - the headers are sent: say it in the stream
        log.exception("generation failed")
        yield _sse(error_body(f"the generation failed: {type(exc).__name__}: {exc}", "server_error"))
    finally:  # also when the client went away and this was cancelled: the generation stops
        stop.set()
    yield _sse("[DONE]")


def _embed(host: ModelHost, value, files: RequestFiles, param: str) -> tuple[list, np.ndarray]:
    resolved = embedding_inputs(host.embedder, value, files)
    try:
        return resolved, host.embedder.embed_resolved(resolved).numpy()
    except (AnybindError, ValueError, RuntimeError) as exc:
        raise bad_request(f"{param}: cannot be embedded ({exc})", param, code="invalid_file") from None


@router.post("/v1/embeddings")
async def embeddings(request: Request):
    host = host_of(request)
    body = await read_json(request)
    check_model_name(host, body)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request("encoding_format: expected 'float' or 'base64'", "encoding_format")

    def work():
        with RequestFiles(host.settings.max_upload_bytes) as files:
            return _embed(host, body.get("input"), files, "input")

    resolved, vectors = await run_in_threadpool(host.run, work)
    if body.get("dimensions") not in (None, vectors.shape[1]):
        raise bad_request(f"dimensions: this space has {vectors.shape[1]} dimensions", "dimensions")
    data = [{"object": "embedding", "index": i, "modality": modality,
             "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if encoding == "base64"
                           else v.tolist())}
            for i, ((modality, _), v) in enumerate(zip(resolved, vectors))]
    return {"object": "list", "data": data, "model": host.model_id,
            "usage": {"prompt_tokens": len(data), "total_tokens": len(data)}}


@router.post("/v1/retrieve")
async def retrieve(request: Request):
    """``{"query": TEXT or a content part, "top_k": 5, "modalities": [...]}`` -> the index's
    nearest files, best first (paths as the index stored them; nothing is read from them)."""
    host = host_of(request)
    if host.index is None:
        raise RequestError(404, "this server has no retrieval index; start it with anybind serve --index INDEX "
                                "(made by anybind index build)", code="no_index")
    body = await read_json(request)
    top_k = _number(body, "top_k", 5, int, 1, 1000)
    modalities = body.get("modalities") or []
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise bad_request("modalities: expected a list of modality names", "modalities")
    if "query" not in body:
        raise bad_request("query: required (text, or a content part holding a file)", "query")

    def work():
        with RequestFiles(host.settings.max_upload_bytes) as files:
            resolved, vectors = _embed(host, [body["query"]], files, "query")
            return resolved[0][0], host.index.search(vectors[0], top_k, modalities)

    modality, found = await run_in_threadpool(host.run, work)
    return {"object": "list", "query_modality": modality,
            "data": [{"path": path, "modality": m, "score": round(score, 6)} for score, m, path in found]}


@router.get("/v1/models")
async def models(request: Request):
    host = host_of(request)
    return {"object": "list", "data": [{"id": host.model_id, "object": "model", "created": host.created,
                                        "owned_by": "anybind", "anybind": host.describe()}]}


@router.get("/health")
async def health(request: Request):
    host = host_of(request)
    return {"status": "ok", "model": host.model_id, "uptime_seconds": round(time.time() - host.started, 1),
            "generations": host.counters.as_dict()}
