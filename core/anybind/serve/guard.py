"""What every request passes first: the body size limit and, where set, the API key."""

from __future__ import annotations

import hmac
import json

from anybind.serve.errors import RequestError


def body_limit(max_upload_bytes: int) -> int:
    """The largest request body: one upload at the limit, base64-encoded (4/3), plus room for the
    conversation around it."""
    return max_upload_bytes * 4 // 3 + 2**20


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused with 413, by its Content-Length
    before any of it is read, else as soon as the bytes received pass the limit."""

    def __init__(self, app, max_upload_bytes: int):
        self.app, self.limit = app, body_limit(max_upload_bytes)
        self.max_upload_mb = max_upload_bytes / 2**20

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _reply(send, self._error(int(declared)))
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._error(received)
            return message

        await self.app(scope, counted, send)

    def _error(self, size: int) -> RequestError:
        return RequestError(413, f"the request ({size / 2**20:.1f} MB) is over this server's limit of "
                                 f"{self.limit / 2**20:.1f} MB: attachments may be up to {self.max_upload_mb:g} MB "
                                 "each (anybind serve --max-upload-mb)", code="payload_too_large")


async def _reply(send, error: RequestError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def check_key(expected: str | None, authorization: str | None) -> None:
    """``Authorization: Bearer KEY`` must match ``expected`` when the server has a key."""
    if expected is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise RequestError(401, "this server needs an API key: send the header Authorization: Bearer KEY",
                           code="missing_api_key", kind="authentication_error")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise RequestError(401, "wrong API key", code="invalid_api_key", kind="authentication_error")
