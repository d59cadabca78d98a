"""Read and check a request body: size limit, JSON, the fields every task needs.

Why stream the body: a 2 GiB upload must be refused with 413 after reading just past
the limit, not after buffering it all. Content-Length is checked first when present.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from meshlb.api.errors import ApiError

PRIORITY_HEADER = "x-meshlb-priority"
DEFAULT_PRIORITY = 5
TIMEOUT_HEADER = "x-meshlb-timeout-s"
MAX_TIMEOUT_S = 7 * 86400.0


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body, or 413 as soon as it passes `limit_bytes`."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, f"request body is larger than the limit of {limit_bytes} bytes")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object or raise 400 saying what is wrong and where."""
    if not body.strip():
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"invalid JSON in request body: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if not isinstance(payload, dict):
        raise ApiError(400, f"request body must be a JSON object, not {type(payload).__name__}")
    return payload


def require_model(payload: dict[str, Any]) -> str:
    """The `model` field: 400 if missing or not a non-empty string (Ollama: 'model is required')."""
    model = payload.get("model")
    if model is None or model == "":
        raise ApiError(400, "model is required")
    if not isinstance(model, str):
        raise ApiError(400, f"field 'model' must be a string, not {type(model).__name__}")
    return model


def parse_priority(raw: str | None) -> int:
    """X-Meshlb-Priority: integer 1-10; 400 if not an integer, 422 if out of range."""
    if raw is None or raw.strip() == "":
        return DEFAULT_PRIORITY
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(
            400, f"header X-Meshlb-Priority must be an integer 1-10, got {raw!r}"
        ) from None
    return check_priority(value, "header X-Meshlb-Priority")


def parse_timeout(raw: str | None, default_s: float | None) -> float | None:
    """X-Meshlb-Timeout-S: seconds (queued plus running), > 0; None = no deadline."""
    if raw is None or raw.strip() == "":
        return default_s
    try:
        value = float(raw.strip())
    except ValueError:
        raise ApiError(
            400, f"header X-Meshlb-Timeout-S must be a number of seconds, got {raw!r}"
        ) from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise ApiError(
            422, f"header X-Meshlb-Timeout-S must be above 0 and at most {MAX_TIMEOUT_S:g} s"
        )
    return value


def check_priority(value: int, where: str) -> int:
    if not 1 <= value <= 10:
        raise ApiError(422, f"{where} must be from 1 to 10 (10 is highest), got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Route:
    """How one Ollama-API path maps to a task."""

    path: str
    kind: str  # generate | chat | embed
    stream_default: bool  # Ollama streams by default; the OpenAI paths do not


OLLAMA_TASK_ROUTES = (
    Route("/api/generate", "generate", True),
    Route("/api/chat", "chat", True),
    Route("/api/embed", "embed", False),
    Route("/api/embeddings", "embed", False),
    Route("/v1/chat/completions", "chat", False),
    Route("/v1/completions", "generate", False),
    Route("/v1/embeddings", "embed", False),
)
