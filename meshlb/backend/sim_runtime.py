"""Runtime of the simulated Ollama: slots and queue, timing, cancellation, request parsing.

Why its own module: the Ollama-native routes (sim_app.py) and the OpenAI-compatible
routes (sim_openai.py) share one capacity model. Like Ollama's scheduler, a request
takes one of `parallel` slots or waits among at most `max_queue` pending requests;
beyond that it is refused with 503. A client that disconnects cancels its request
wherever it is (waiting for a slot, "loading", or streaming), which frees the slot, as
Ollama does when the request context is cancelled.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from meshlb.backend.sim_config import SimOllamaConfig
from meshlb.backend.sim_engine import (
    Completion,
    Metrics,
    ModelSpec,
    Renderer,
    canonical_name,
    describe_model,
)

# Ollama's own sentences (server/sched.go, server/routes.go).
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
INJECTED_ERROR = "llama runner process has terminated: exit status 2 (simulated fault)"
JSON_UTF8 = "application/json; charset=utf-8"
FOREVER_S = 1e10  # keep_alive < 0: never unload


class ApiError(Exception):
    """An error answer; the app renders it in Ollama's or OpenAI's shape by path."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SimulatedDeath(Exception):
    """Raised mid-stream to make the server drop the connection (fault injection)."""


class SimState:
    """Mutable state of one simulator: slots, pending count, loaded models, counters."""

    def __init__(self, config: SimOllamaConfig) -> None:
        self.config = config
        self.specs: dict[str, ModelSpec] = {}
        for name in config.models:
            spec = describe_model(name)
            self.specs[spec.name] = spec
        self.rng = random.Random(config.seed)
        self.modified_at = time.time() - 86_400.0
        self._slots = trio.Semaphore(config.parallel)
        self.running = 0
        self.pending = 0
        self.loaded_until: dict[str, float] = {}  # canonical name -> trio time
        self.stats: Counter[str] = Counter()

    def lookup(self, model: str) -> ModelSpec | None:
        return self.specs.get(canonical_name(model))

    def try_admit(self) -> bool:
        """Count one more request in, unless slots and queue are all taken."""
        if self.running + self.pending >= self.config.parallel + self.config.max_queue:
            return False
        self.pending += 1
        return True

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait (FIFO) for a slot; must follow a successful `try_admit`."""
        try:
            await self._slots.acquire()
        finally:
            self.pending -= 1
        self.running += 1
        self.stats["max_running_seen"] = max(self.stats["max_running_seen"], self.running)
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()

    async def load(self, spec: ModelSpec) -> None:
        """Injected latency, plus load time when the model is not in memory."""
        delay = self.config.latency_ms / 1000.0
        if self.loaded_until.get(spec.name, -math.inf) <= trio.current_time():
            delay += self.config.load_ms / 1000.0
        if delay > 0:
            await trio.sleep(delay)

    def touch(self, spec: ModelSpec, keep_alive_s: float) -> None:
        """The model stays loaded `keep_alive_s` from now (0 unloads it)."""
        self.loaded_until[spec.name] = trio.current_time() + keep_alive_s

    def roll(self, rate: float) -> bool:
        """One seeded fault-injection die: True with probability `rate`."""
        return rate > 0 and self.rng.random() < rate


@dataclass
class GenJob:
    """One text generation: what to say, how to render it, and when it arrived."""

    spec: ModelSpec
    completion: Completion
    renderer: Renderer
    prompt_tokens: int
    stream: bool
    keep_alive_s: float
    arrival: float = field(default_factory=trio.current_time)
    die_after: int | None = None  # cut the connection after this many chunks
    finished: bool = False  # the last byte is being sent: a disconnect now is no cancel

    async def run(self, state: SimState, send: Send) -> None:
        cfg = state.config
        async with state.slot():
            await state.load(self.spec)
            loaded_at = trio.current_time()
            first_at = loaded_at + self.prompt_tokens / cfg.prompt_tps
            tokens = self.completion.tokens
            tps = cfg.tokens_per_second
            r = self.renderer
            if self.stream:
                for i, tok in enumerate(tokens):
                    await trio.sleep_until(first_at + (i + 1) / tps)
                    if i == 0:
                        await _start(send, r.stream_media_type)
                    await send(
                        {
                            "type": "http.response.body",
                            "body": r.chunk(tok, time.time()),
                            "more_body": True,
                        }
                    )
                    if self.die_after is not None and i + 1 >= self.die_after:
                        state.stats["died_mid_stream"] += 1
                        raise SimulatedDeath("connection cut by die_mid_stream_rate")
                m = _metrics(
                    self.arrival, loaded_at, self.prompt_tokens, len(tokens), cfg.prompt_tps, tps
                )
                body = r.tail(self.completion, m, time.time())
            else:
                await trio.sleep_until(first_at + len(tokens) / tps)
                m = _metrics(
                    self.arrival, loaded_at, self.prompt_tokens, len(tokens), cfg.prompt_tps, tps
                )
                body = r.whole(self.completion, m, time.time())
                await _start(send, JSON_UTF8, len(body))
            self.finished = True
            state.touch(self.spec, self.keep_alive_s)
            state.stats["served"] += 1
            await send({"type": "http.response.body", "body": body, "more_body": False})


def _metrics(
    arrival: float,
    loaded_at: float,
    prompt_tokens: int,
    eval_count: int,
    prompt_tps: float,
    tps: float,
) -> Metrics:
    """Durations in ns: load = queue wait + load (as Ollama measures it), the eval
    durations are the nominal model speed, total is measured, so total >= the parts."""
    now = trio.current_time()
    return Metrics(
        total_ns=int((now - arrival) * 1e9),
        load_ns=int((loaded_at - arrival) * 1e9),
        prompt_eval_count=prompt_tokens,
        prompt_eval_ns=int(prompt_tokens / prompt_tps * 1e9),
        eval_count=eval_count,
        eval_ns=int(eval_count / tps * 1e9),
    )


@dataclass
class EmbedJob:
    """One embedding request: cost is prompt processing only; `build` makes the body."""

    spec: ModelSpec
    prompt_tokens: int
    keep_alive_s: float
    build: Callable[[Metrics], bytes]
    arrival: float = field(default_factory=trio.current_time)
    finished: bool = False

    async def run(self, state: SimState, send: Send) -> None:
        async with state.slot():
            await state.load(self.spec)
            loaded_at = trio.current_time()
            await trio.sleep_until(loaded_at + self.prompt_tokens / state.config.prompt_tps)
            m = _metrics(
                self.arrival,
                loaded_at,
                self.prompt_tokens,
                0,
                state.config.prompt_tps,
                state.config.tokens_per_second,
            )
            body = self.build(m)
            await _start(send, JSON_UTF8, len(body))
            self.finished = True
            state.touch(self.spec, self.keep_alive_s)
            state.stats["served"] += 1
            await send({"type": "http.response.body", "body": body, "more_body": False})


async def _start(send: Send, media_type: str, length: int | None = None) -> None:
    headers = [(b"content-type", media_type.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})


class SimResponse(Response):
    """ASGI response that runs a job and cancels it if the client goes away.

    Starlette cancels nothing for a non-streamed endpoint and only notices a gone
    client of a stream at its next write; Ollama cancels the request context at once.
    So we watch `receive()` for `http.disconnect` beside the job and cancel the job.
    """

    def __init__(self, state: SimState, job: GenJob | EmbedJob) -> None:
        self._state = state
        self._job = job
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        died = False
        disconnected = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal disconnected
                while (await receive())["type"] != "http.disconnect":
                    pass
                disconnected = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                await self._job.run(state, send)
            except SimulatedDeath:
                died = True
            finally:
                nursery.cancel_scope.cancel()
        if disconnected and not self._job.finished:
            state.stats["cancelled"] += 1
        if died:
            raise SimulatedDeath("connection cut by die_mid_stream_rate")


def admit(state: SimState, job: GenJob | EmbedJob) -> SimResponse:
    """Roll the fault dice, then take the job in or refuse it with 503."""
    cfg = state.config
    state.stats["requests"] += 1
    if state.roll(cfg.error_rate):
        state.stats["errors_injected"] += 1
        raise ApiError(500, INJECTED_ERROR)
    if not state.try_admit():
        state.stats["rejected_busy"] += 1
        raise ApiError(503, BUSY_MESSAGE)
    if isinstance(job, GenJob) and job.stream and state.roll(cfg.die_mid_stream_rate):
        job.die_after = state.rng.randint(1, max(1, len(job.completion.tokens) - 1))
    return SimResponse(state, job)


# ---- request parsing, with Go-like messages for bad bodies ----

_JSON_KIND = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    type(None): "null",
}


async def read_json(request: Request, go_type: str) -> dict[str, Any]:
    """Parse the body as a JSON object or raise 400 the way Ollama's gin binding words it."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        first = raw.lstrip()[:1].decode("latin-1")
        if first in "{[":
            raise ApiError(400, "unexpected EOF") from None
        raise ApiError(400, f"invalid character '{first}' looking for beginning of value") from None
    if not isinstance(body, dict):
        kind = _JSON_KIND.get(type(body), "value")
        raise ApiError(400, f"json: cannot unmarshal {kind} into Go value of type {go_type}")
    return body


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


def keep_alive_s(body: dict[str, Any], default_s: float) -> float:
    """Ollama's keep_alive: seconds as a number, or a Go duration string; negative = forever."""
    value = body.get("keep_alive")
    if value is None:
        return default_s
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-")
        parts = _DURATION_RE.findall(text)
        if text in ("0",):
            seconds = 0.0
        elif not parts or "".join(n + u for n, u in parts) != text:
            raise ApiError(400, f'time: invalid duration "{value}"')
        else:
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        raise ApiError(400, "json: cannot unmarshal keep_alive")
    return FOREVER_S if seconds < 0 else seconds


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
