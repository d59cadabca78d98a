"""The client of the local Ollama: one keep-alive pool (`meshlb.http_client`), raw bytes.

Why raw bytes: a node forwards Ollama's NDJSON/SSE answer chunk by chunk without
re-parsing it (the per-chunk CPU budget is small); only the final chunk is parsed, for
token accounting. Nothing here knows about the simulator: it speaks Ollama's API.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

from meshlb.http_client import NO_ANSWER_IN_TIME, HttpPool, Origin, UpstreamError, UpstreamResponse

# Ask Ollama for identity encoding: we pass bytes through and read the final chunk.
_JSON_HEADERS = [(b"accept-encoding", b"identity"), (b"content-type", b"application/json")]
_GET_HEADERS = [(b"accept-encoding", b"identity")]


class BackendError(Exception):
    """The local Ollama could not be reached or broke the connection; `reason` is a sentence."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"the Ollama at {url} {reason}")


def describe_http_error(error: httpx.HTTPError) -> str:
    """A short human reason for an httpx failure (used in 503 bodies and logs)."""
    if isinstance(error, httpx.ConnectError):
        return "is not reachable (connection refused or host down)"
    if isinstance(error, httpx.TimeoutException):
        return "did not answer in time"
    if isinstance(error, httpx.RemoteProtocolError):
        return "closed the connection mid-answer"
    return f"failed: {type(error).__name__}"


class OllamaBackend:
    """One Ollama server, reached through one keep-alive pool.

    The pool keeps up to `pool_size` idle connections (the backend's parallel slots
    plus metadata calls); it never makes a request wait for a connection: the
    scheduler already bounds how many run at once.
    """

    def __init__(self, base_url: str, pool_size: int = 8, connect_timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = Origin.of(self.base_url)
        self._prefix = path_prefix(self.base_url)
        self.pool = HttpPool(connect_timeout_s=connect_timeout_s, max_idle_per_origin=pool_size)

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def open_stream(self, method: str, path: str, body: bytes | None) -> UpstreamResponse:
        """Send a request and return the response with its body still unread (caller closes)."""
        headers = _JSON_HEADERS if body is not None else _GET_HEADERS
        try:
            return await self.pool.request(self._origin, method, self._prefix + path, headers, body)
        except UpstreamError as e:
            raise BackendError(self.base_url, e.reason) from e

    async def _whole(
        self, method: str, path: str, body: bytes | None, timeout_s: float | None
    ) -> tuple[int, bytes]:
        with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")) as scope:
            response = await self.open_stream(method, path, body)
            try:
                return response.status_code, await response.aread()
            except UpstreamError as e:
                raise BackendError(self.base_url, e.reason) from e
            finally:
                await response.aclose()
        assert scope.cancelled_caught
        raise BackendError(self.base_url, NO_ANSWER_IN_TIME)

    async def get_json(self, path: str, timeout_s: float = 5.0) -> Any:
        """GET a small JSON document (tags, ps, version)."""
        status, content = await self._whole("GET", path, None, timeout_s)
        if status >= 400:
            raise BackendError(self.base_url, f"answered {status} to {path}")
        try:
            return json.loads(content)
        except ValueError as e:
            raise BackendError(self.base_url, f"sent invalid JSON for {path}") from e

    async def post_json(
        self, path: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        """POST a JSON body and read the whole answer (non-streamed tasks, /api/show)."""
        return await self._whole("POST", path, json.dumps(payload).encode(), timeout_s)


def path_prefix(base_url: str) -> str:
    """The path prefix of a base URL (`http://h:1/ollama` -> `/ollama`), usually empty."""
    rest = base_url.split("//", 1)[-1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else ""
