"""Runtime of the simulated Ollama: the memory core's trio driver, jobs, cancellation.

Why its own module: the Ollama-native routes (sim_app.py) and the OpenAI-compatible
routes (sim_openai.py) share one host. Admission is as before: a request is refused
with 503 when `parallel + max_queue` requests are already in (running or waiting).
Which model is loaded, what waits for a load or an eviction, and which slot (with
which cached prefix) a request gets is decided by the pure core in sim_memory.py;
`SimState` drives it with trio's clock (every waiter sleeps until the core's next
deadline or until another request changes it, then advances it). A client that
disconnects cancels its request wherever it is (queued, loading, streaming), as
Ollama does when the request context is cancelled.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from meshlb.backend.sim_catalog import default_size
from meshlb.backend.sim_config import SimOllamaConfig
from meshlb.backend.sim_engine import (
    Completion,
    ModelSpec,
    canonical_name,
    describe_model,
)
from meshlb.backend.sim_memory import Ask, Grant, ModelMemory
from meshlb.backend.sim_parse import JSON_UTF8, ApiError
from meshlb.backend.sim_prompt import DEFAULT_NUM_CTX, evaluated_tokens
from meshlb.backend.sim_render import (
    Metrics,
    Renderer,
)

__all__ = ["JSON_UTF8", "ApiError", "SimState", "SimulatedDeath", "admit"]

# Ollama's own sentences (server/sched.go, server/routes.go).
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
INJECTED_ERROR = "llama runner process has terminated: exit status 2 (simulated fault)"


class SimulatedDeath(Exception):
    """Raised mid-stream to make the server drop the connection (fault injection)."""


def sized_spec(name: str, size: int | None) -> ModelSpec:
    """The model's facts, weighing `size` bytes, else the library's size, else derived."""
    spec = describe_model(name)
    size = size if size is not None else default_size(name)
    return spec if size is None else dataclasses.replace(spec, size=size)


@dataclass
class Lease:
    """A granted request: its grant, and what its slot holds when it ends."""

    grant: Grant
    processed: str | None = None


class SimState:
    """Mutable state of one simulator: the memory core, admission counts, counters."""

    def __init__(self, config: SimOllamaConfig) -> None:
        self.config = config
        self.specs: dict[str, ModelSpec] = {}
        for name, size in config.model_entries():
            spec = sized_spec(name, size)
            self.specs[spec.name] = spec
        self.rng = random.Random(config.seed)
        self.modified_at = time.time() - 86_400.0
        self.memory = ModelMemory(config.memory())
        self.running = 0
        self.pending = 0
        self.stats: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._changed = trio.Event()

    def lookup(self, model: str) -> ModelSpec | None:
        return self.specs.get(canonical_name(model))

    def try_admit(self) -> bool:
        """Count one more request in, unless slots and queue are all taken."""
        if self.running + self.pending >= self.config.parallel + self.config.max_queue:
            return False
        self.pending += 1
        return True

    def now(self) -> float:
        """Trio time, with the core brought up to it (expiries, finished loads)."""
        now = trio.current_time()
        self._after(self.memory.advance, now)
        return now

    def _after(self, change: Callable[[float], None], now: float) -> None:
        gen = self.memory.generation
        change(now)
        if self.memory.generation != gen:
            self._changed.set()
            self._changed = trio.Event()

    @asynccontextmanager
    async def runner(
        self,
        spec: ModelSpec,
        keep_alive_s: float | None,
        *,
        prompt: str | None = "",
        num_ctx: int = DEFAULT_NUM_CTX,
        use_cache: bool = True,
    ) -> AsyncIterator[Lease]:
        """Wait until the model is loaded and (unless `prompt` is None) a slot is ours.

        Must follow a successful `try_admit`. The slot is given back on exit, holding
        `lease.processed` if the caller set it (what the prefix cache compares with).
        """
        req_id = next(self._ids)
        mem = self.memory
        ask = Ask(req_id, spec.name, spec.size, keep_alive_s, num_ctx, prompt, use_cache)
        try:
            self._after(lambda now: mem.submit(ask, now), trio.current_time())
            while (grant := mem.grant(req_id)) is None:
                changed = self._changed
                with trio.move_on_at(mem.next_deadline()):
                    await changed.wait()
                self.now()
        except BaseException:
            self._after(lambda now: mem.cancel(req_id, now), trio.current_time())
            raise
        finally:
            self.pending -= 1
        self.running += 1
        self.stats["max_running_seen"] = max(self.stats["max_running_seen"], self.running)
        lease = Lease(grant)
        try:
            yield lease
        finally:
            self.running -= 1
            self._after(lambda now: mem.finish(req_id, now, lease.processed), trio.current_time())

    def expire(self, spec: ModelSpec) -> None:
        """`keep_alive: 0` with nothing to do: unload now, or when its requests end."""
        self._after(lambda now: self.memory.expire(spec.name, now), trio.current_time())

    def roll(self, rate: float) -> bool:
        """One seeded fault-injection die: True with probability `rate`."""
        return rate > 0 and self.rng.random() < rate


class Job(Protocol):
    """What SimResponse runs: `finished` turns true when the last byte is being sent."""

    finished: bool

    async def run(self, state: SimState, send: Send) -> None: ...


@dataclass
class GenJob:
    """One text generation: the rendered (already truncated) prompt, what to say, how to
    render it, and when it arrived."""

    spec: ModelSpec
    completion: Completion
    renderer: Renderer
    prompt: str
    stream: bool
    keep_alive_s: float | None
    num_ctx: int = DEFAULT_NUM_CTX
    arrival: float = field(default_factory=trio.current_time)
    die_after: int | None = None  # cut the connection after this many chunks
    finished: bool = False  # the last byte is being sent: a disconnect now is no cancel

    async def run(self, state: SimState, send: Send) -> None:
        cfg = state.config
        if cfg.latency_ms > 0:
            await trio.sleep(cfg.latency_ms / 1000.0)
        async with state.runner(
            self.spec, self.keep_alive_s, prompt=self.prompt, num_ctx=self.num_ctx
        ) as lease:
            total, evaluated = evaluated_tokens(self.prompt, lease.grant.cached_chars)
            first_at = trio.current_time() + evaluated / cfg.prompt_tps
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
                m = self._metrics(state, lease.grant, total, evaluated)
                body = r.tail(self.completion, m, time.time())
            else:
                await trio.sleep_until(first_at + len(tokens) / tps)
                m = self._metrics(state, lease.grant, total, evaluated)
                body = r.whole(self.completion, m, time.time())
                await _start(send, JSON_UTF8, len(body))
            self.finished = True
            lease.processed = self.prompt + self.completion.text
            state.stats["served"] += 1
            state.stats["prompt_tokens_evaluated"] += evaluated
            await send({"type": "http.response.body", "body": body, "more_body": False})

    def _metrics(self, state: SimState, grant: Grant, total: int, evaluated: int) -> Metrics:
        cfg = state.config
        return _metrics(
            self.arrival,
            grant.runner_at,
            total,
            len(self.completion.tokens),
            cfg.prompt_tps,
            cfg.tokens_per_second,
            cached=total - evaluated,
        )


def _metrics(
    arrival: float,
    loaded_at: float,
    prompt_tokens: int,
    eval_count: int,
    prompt_tps: float,
    tps: float,
    cached: int = 0,
) -> Metrics:
    """Durations in ns: load = from arrival until the runner was ready for the request
    (scheduling wait + load, as Ollama measures it; a wait for a slot is not in it), the
    eval durations are the nominal model speed, total is measured, so total >= parts.

    As Ollama (0.33+) reports a prompt-cache hit: `prompt_eval_count` is the whole
    prompt, the cached part is `prompt_eval_cached_count`, and `prompt_eval_duration`
    covers only what was evaluated."""
    now = trio.current_time()
    return Metrics(
        total_ns=int((now - arrival) * 1e9),
        load_ns=int((loaded_at - arrival) * 1e9),
        prompt_eval_count=prompt_tokens,
        prompt_eval_ns=int((prompt_tokens - cached) / prompt_tps * 1e9),
        eval_count=eval_count,
        eval_ns=int(eval_count / tps * 1e9),
        prompt_eval_cached_count=cached,
    )


@dataclass
class EmbedJob:
    """One embedding request: cost is prompt processing only; `build` makes the body."""

    spec: ModelSpec
    prompt_tokens: int
    keep_alive_s: float | None
    build: Callable[[Metrics], bytes]
    num_ctx: int = DEFAULT_NUM_CTX
    arrival: float = field(default_factory=trio.current_time)
    finished: bool = False

    async def run(self, state: SimState, send: Send) -> None:
        cfg = state.config
        if cfg.latency_ms > 0:
            await trio.sleep(cfg.latency_ms / 1000.0)
        async with state.runner(
            self.spec, self.keep_alive_s, num_ctx=self.num_ctx, use_cache=False
        ) as lease:
            await trio.sleep(self.prompt_tokens / cfg.prompt_tps)
            m = _metrics(
                self.arrival,
                lease.grant.runner_at,
                self.prompt_tokens,
                0,
                cfg.prompt_tps,
                cfg.tokens_per_second,
            )
            body = self.build(m)
            await _start(send, JSON_UTF8, len(body))
            self.finished = True
            state.stats["served"] += 1
            await send({"type": "http.response.body", "body": body, "more_body": False})


@dataclass
class LoadJob:
    """An empty prompt: load the model (waiting as a request would), then say so."""

    spec: ModelSpec
    keep_alive_s: float | None
    build: Callable[[], bytes]
    num_ctx: int = DEFAULT_NUM_CTX
    finished: bool = False

    async def run(self, state: SimState, send: Send) -> None:
        async with state.runner(self.spec, self.keep_alive_s, prompt=None, num_ctx=self.num_ctx):
            body = self.build()
            await _start(send, JSON_UTF8, len(body))
            self.finished = True
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

    def __init__(self, state: SimState, job: Job) -> None:
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


def admit(state: SimState, job: Job) -> SimResponse:
    """Roll the fault dice (inference only), then take the job in or refuse it with 503."""
    cfg = state.config
    state.stats["requests"] += 1
    if not isinstance(job, LoadJob) and state.roll(cfg.error_rate):
        state.stats["errors_injected"] += 1
        raise ApiError(500, INJECTED_ERROR)
    if not state.try_admit():
        state.stats["rejected_busy"] += 1
        raise ApiError(503, BUSY_MESSAGE)
    if isinstance(job, GenJob) and job.stream and state.roll(cfg.die_mid_stream_rate):
        job.die_after = state.rng.randint(1, max(1, len(job.completion.tokens) - 1))
    return SimResponse(state, job)
