"""Errors a request can cause, each with its HTTP status and OpenAI's error ``type`` and ``code``.

The body is OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so the
official clients raise their usual exceptions (``openai.BadRequestError`` for a 400, ...).
"""

from __future__ import annotations

from anybind.errors import AnybindError


class RequestError(AnybindError):
    """A request the server refuses; ``message`` names what is wrong and, for a file, the file."""

    def __init__(self, status: int, message: str, *, code: str = "invalid_request", param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.code, self.param)


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> RequestError:
    return RequestError(400, message, code=code, param=param)


def unsupported(message: str, param: str | None = None) -> RequestError:
    return RequestError(415, message, code="unsupported_media_type", param=param)


def too_large(message: str, param: str | None = None) -> RequestError:
    return RequestError(413, message, code="payload_too_large", param=param)
