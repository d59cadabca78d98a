"""Errors as the client sees them: `{"error": "<sentence>"}` with the right status.

Why one exception type: handlers raise `ApiError` wherever they find a problem, and
one Starlette handler turns it into JSON; anything else escaping a handler is a bug
in meshlb, logged with its traceback and answered 500 with a sentence.
"""

from __future__ import annotations

import json

import structlog
import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

log = structlog.get_logger()


class ApiError(Exception):
    """An HTTP error with a human sentence and optional extra headers (e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# Ollama's OpenAI-compatible layer (openai/openai.go) answers errors in OpenAI's shape,
# so the `openai` client can show the message; meshlb's own /v1 API keeps SPEC's shape.
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models")
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def is_openai_path(path: str) -> bool:
    return path in OPENAI_PATHS or path.startswith("/v1/models/")


def error_object(status: int, message: str, path: str = "") -> dict[str, object]:
    """The JSON error for `path`: Ollama's `{"error": sentence}`, or OpenAI's shape."""
    if is_openai_path(path):
        kind = OPENAI_ERROR_TYPES.get(status, "api_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"error": message}


def stream_error_chunk(message: str, path: str = "") -> bytes:
    """An error that ends a stream already begun: an NDJSON line, or an SSE event."""
    body = json.dumps(error_object(500, message, path)).encode()
    return b"data: " + body + b"\n\n" if is_openai_path(path) else body + b"\n"


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, path: str = ""
) -> Response:
    """The one JSON error shape meshlb answers with (OpenAI's on OpenAI paths)."""
    return Response(
        json.dumps(error_object(status, message, path)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers, request.url.path)


# Raised by the server's socket when the client went away while we were answering
# (hypercorn can race its own close against our send): not a meshlb bug.
# A client that hangs up while still sending its body is not a meshlb bug either.
CONNECTION_GONE = (
    trio.BusyResourceError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ClientDisconnect,
)


def is_connection_gone(exc: BaseException) -> bool:
    """A hang-up, also when a nursery wrapped it in an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_connection_gone(e) for e in exc.exceptions)
    return isinstance(exc, CONNECTION_GONE)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    if is_connection_gone(exc):
        log.info(
            "client hung up while sending its request"
            if isinstance(exc, ClientDisconnect)
            else "client connection closed while answering",
            path=request.url.path,
            error=type(exc).__name__,
        )
        return error_response(499, "client closed the connection", path=request.url.path)
    log.exception("unhandled error", path=request.url.path, method=request.method)
    return error_response(
        500,
        f"meshlb hit an internal error ({type(exc).__name__}); it was logged on the node",
        path=request.url.path,
    )


def retry_after(seconds: float) -> dict[str, str]:
    """A Retry-After header with a whole number of seconds, at least 1."""
    return {"Retry-After": str(max(1, round(seconds)))}
