"""Request parsing of the simulator, with Go-like messages for bad bodies.

Why apart: every route (native, OpenAI, model management) parses bodies the same way,
and Ollama's errors for bad input are gin's and encoding/json's sentences; keeping them
in one place keeps them consistent.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from meshlb.backend.sim_memory import FOREVER_S

JSON_UTF8 = "application/json; charset=utf-8"


class ApiError(Exception):
    """An error answer; the app renders it in Ollama's or OpenAI's shape by path."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_JSON_KIND = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    type(None): "null",
}


MAX_DEPTH_MESSAGE = "exceeded max depth"  # encoding/json's sentence past its nesting limit
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_json(request: Request, go_type: str) -> dict[str, Any]:
    """Parse the body as a JSON object or raise 400 the way Ollama's gin binding words it.

    Text is made valid the way Go's encoding/json makes it: invalid UTF-8 bytes and lone
    surrogate escapes (`"\\ud800"`) become U+FFFD, so no handler ever meets a string it
    cannot encode. Nesting deeper than Python's parser goes is a 400 (Go's limit is
    10 000 levels; ours is lower, about 900, and says so with Go's sentence).
    """
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw.decode("utf-8", "replace"))
    except RecursionError:
        raise ApiError(400, MAX_DEPTH_MESSAGE) from None
    except ValueError:
        first = raw.lstrip()[:1].decode("latin-1")
        if first in "{[":
            raise ApiError(400, "unexpected EOF") from None
        raise ApiError(400, f"invalid character '{first}' looking for beginning of value") from None
    if not isinstance(body, dict):
        kind = _JSON_KIND.get(type(body), "value")
        raise ApiError(400, f"json: cannot unmarshal {kind} into Go value of type {go_type}")
    if _ESCAPED_SURROGATE.search(raw):
        fixed: dict[str, Any] = _valid_text(body)
        return fixed
    return body


def _valid_text(value: Any) -> Any:
    """A copy of parsed JSON with every lone surrogate replaced by U+FFFD (no recursion)."""

    def fix(x: Any) -> Any:
        return _SURROGATE.sub("\ufffd", x) if isinstance(x, str) else x

    root: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        parent, key = stack.pop()
        item = parent[key]
        if isinstance(item, dict):
            fixed = {fix(k): v for k, v in item.items()}
            parent[key] = fixed
            stack.extend((fixed, k) for k in fixed)
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
        else:
            parent[key] = fix(item)
    return root[0]


def field_of(body: dict[str, Any], key: str, kind: type, go_type: str, default: Any) -> Any:
    """`body[key]` if it has the JSON kind `kind`, the default when absent or null, else 400."""
    value = body.get(key)
    if value is None:
        return default
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = {str: "string", list: "[]", dict: "map", bool: "bool", int: "int", float: "float64"}[
            kind
        ]
        raise ApiError(
            400,
            f"json: cannot unmarshal {_JSON_KIND.get(type(value), 'value')} "
            f"into Go struct field {go_type}.{key} of type {want}",
        )
    return value


def require_model(body: dict[str, Any], go_type: str) -> str:
    model = field_of(body, "model", str, go_type, "")
    if not model:
        raise ApiError(400, "model is required")
    return str(model)


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_s(body: dict[str, Any]) -> float | None:
    """Ollama's keep_alive (api.Duration): a number of seconds or a Go duration string;
    negative means forever (FOREVER_S); None when absent (the runner keeps its own)."""
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _go_duration(value)
    else:
        raise ApiError(400, "json: cannot unmarshal keep_alive")
    return FOREVER_S if seconds < 0 else min(seconds, FOREVER_S)


def _go_duration(value: str) -> float:
    """time.ParseDuration, with its error sentences."""
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    parts = _DURATION_RE.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        if body and re.fullmatch(r"\d+(?:\.\d+)?", body):
            raise ApiError(400, f'time: missing unit in duration "{value}"')
        raise ApiError(400, f'time: invalid duration "{value}"')
    return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)


def int_option(options: dict[str, Any], key: str, default: int) -> int:
    value = options.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f'option "{key}" must be of type integer')
    return int(value)


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes, the way Go's encoder writes them (no spaces)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(obj: Any, status: int = 200) -> Response:
    """A compact JSON body with Ollama's content type."""
    return Response(dumps(obj), status_code=status, media_type=JSON_UTF8)


def parse_keep_alive(text: str) -> float:
    """OLLAMA_KEEP_ALIVE's forms for the CLI: a Go duration or whole seconds; < 0 = forever.

    Raises ValueError with Go's sentence for anything else.
    """
    try:
        seconds = float(int(text.strip()))
    except ValueError:
        try:
            seconds = _go_duration(text)
        except ApiError as e:
            raise ValueError(e.message) from None
    return FOREVER_S if seconds < 0 else min(seconds, FOREVER_S)
