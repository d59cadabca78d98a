"""The httpx client for the local Ollama: one pooled AsyncClient, raw byte streaming.

Why raw bytes: a node forwards Ollama's NDJSON/SSE answer chunk by chunk without
re-parsing it (the per-chunk CPU budget is small); only the final chunk is parsed, for
token accounting. Nothing here knows about the simulator: it speaks Ollama's API.
"""

from __future__ import annotations

from typing import Any

import httpx

# Ask Ollama for identity encoding: we pass bytes through and read the final chunk.
_UPSTREAM_HEADERS = {"accept-encoding": "identity"}


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
    """One Ollama server, reached through a single pooled httpx.AsyncClient.

    The pool is sized to the backend's parallelism (plus headroom for metadata calls):
    httpcore's pool slows down badly with hundreds of warm connections, and Ollama runs
    no more than its parallel slots anyway.
    """

    def __init__(self, base_url: str, pool_size: int = 8, connect_timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            # No read timeout: a long generation may pause for minutes between tokens.
            timeout=httpx.Timeout(None, connect=connect_timeout_s),
            headers=_UPSTREAM_HEADERS,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def open_stream(self, method: str, path: str, body: bytes | None) -> httpx.Response:
        """Send a request and return the response with its body still unread (caller closes)."""
        request = self._client.build_request(
            method,
            path,
            content=body,
            headers={"content-type": "application/json"} if body is not None else None,
        )
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise BackendError(self.base_url, describe_http_error(e)) from e

    async def get_json(self, path: str, timeout_s: float = 5.0) -> Any:
        """GET a small JSON document (tags, ps, version)."""
        try:
            response = await self._client.get(path, timeout=timeout_s)
            response.raise_for_status()
            return response.json()
        except httpx.HTTPStatusError as e:
            raise BackendError(self.base_url, f"answered {e.response.status_code} to {path}") from e
        except httpx.HTTPError as e:
            raise BackendError(self.base_url, describe_http_error(e)) from e
        except ValueError as e:
            raise BackendError(self.base_url, f"sent invalid JSON for {path}") from e

    async def post_json(
        self, path: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        """POST a JSON body and read the whole answer (non-streamed tasks, /api/show)."""
        try:
            response = await self._client.post(path, json=payload, timeout=timeout_s)
            return response.status_code, response.content
        except httpx.HTTPError as e:
            raise BackendError(self.base_url, describe_http_error(e)) from e
