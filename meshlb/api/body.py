"""Read and check a request body: size limit, JSON, the fields every task needs.

Why stream the body: a 2 GiB upload must be refused with 413 after reading just past
the limit, not after buffering it all. Content-Length is checked first when present.
"""

from __future__ import annotations

import json
import math
import re
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


# Deeper JSON is refused with 400 (Ollama, in Go, accepts up to 10 000 levels; no real
# request nests past a handful, and Python code walking a deep value can hit its
# recursion limit). Counting brackets first (C speed) skips the walk for normal bodies.
MAX_JSON_DEPTH = 100
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} does not fit in a 64-bit float")
    return value


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if `value` nests containers deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def repair_surrogates(value: Any) -> Any:
    """Lone UTF-16 surrogates (from `\\ud800` escapes) become U+FFFD, as Go's
    encoding/json (Ollama) decodes them, so the value can be re-encoded as UTF-8."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [repair_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {repair_surrogates(k): repair_surrogates(v) for k, v in value.items()}
    return value


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object or raise 400 saying what is wrong and where.

    Strict where Go is strict (no NaN/Infinity, no float past 64 bits), bounded in
    depth, and lone surrogate escapes repaired: nothing a client sends can turn into a
    500 further down (re-encoding, msgpack, a recursive walk)."""
    if not body.strip():
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        payload = json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"invalid JSON in request body: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise ApiError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # NaN/Infinity, a float past 64 bits, an int of 4300+ digits
        why = "a number has more than 4300 digits" if "digits" in str(e) else str(e)
        raise ApiError(400, f"invalid JSON in request body: {why}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, f"request body must be a JSON object, not {type(payload).__name__}")
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth_exceeds(
        payload, MAX_JSON_DEPTH
    ):
        raise ApiError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if _LONE_SURROGATE_ESCAPE.search(body):
        repaired: dict[str, Any] = repair_surrogates(payload)
        return repaired
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


def parse_hops(raw: str | None) -> int:
    """How many nodes a request already passed through (set by meshlb nodes only).
    ASCII digits only: `'²'.isdigit()` is true but `int('²')` fails."""
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 3:
        return 0
    return int(raw)


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
