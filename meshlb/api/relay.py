"""Run one Ollama-API task locally and relay Ollama's answer to the client byte by byte.

Why a custom ASGI response: the task waits for its turn, then streams, and the
client may leave at any moment. The whole `__call__` runs in a scope the client's
hang-up cancels (`meshlb.api.hang_up`), so a client that leaves while queued takes its
task out of the queue, and one that leaves mid-stream cancels the upstream request.
The slot is given back exactly once. A deadline (X-Meshlb-Timeout-S) covers queue
and run: past it the client gets 504, or an error object if the answer had begun. A
hang-up after a complete answer is the normal end of a request, and is not counted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import structlog
import trio
from starlette.types import Message, Receive, Scope, Send

from meshlb.api.errors import error_object, stream_error_chunk
from meshlb.api.hang_up import cancelled_on_hang_up
from meshlb.api.ports import NodeCounters
from meshlb.backend.ollama import BackendError, OllamaBackend
from meshlb.http_client import UpstreamError, UpstreamResponse
from meshlb.sched.driver import LocalScheduler
from meshlb.telemetry import RequestStats
from meshlb.tokens import RateAverage, generation_rate_from_tail, tokens_from_tail

log = structlog.get_logger()

# Ollama answered 503 "server busy" this many times in a row: give the 503 to the client.
MAX_BUSY_RETRIES = 20
TAIL_BYTES = 4096
# Answers with a Content-Length up to this size are relayed in one piece.
WHOLE_BODY_MAX = 1 << 20


@dataclass
class LocalTask:
    """An accepted Ollama-API request, already queued under `task_id`."""

    task_id: str
    path: str
    body: bytes
    model: str
    deadline_at: float = math.inf  # trio clock; queue plus run
    timeout_s: float | None = None  # as the client asked, for the 504's sentence


@dataclass(frozen=True, slots=True)
class RelayPorts:
    """What relaying a local request uses of the node."""

    node_id: str
    scheduler: LocalScheduler
    backend: OllamaBackend
    generation_rate: RateAverage  # fed from each answer's tail (gossiped for placement)
    counters: NodeCounters
    requests: RequestStats  # the /metrics histograms


class RelayResponse:
    """ASGI response: wait for the turn, call the local Ollama, stream its answer through."""

    def __init__(self, ctx: RelayPorts, task: LocalTask) -> None:
        self.ctx = ctx
        self.task = task
        self._holding_slot = False
        self._tail = b""
        self._started = False  # the response's status line went out
        self._answered = False  # its last byte went out
        self._timer = ctx.requests.timer(task.model)  # histograms for /metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tracked(message: Message) -> None:
            self._timer.on_send(message)
            if message["type"] == "http.response.start":
                self._started = True
            elif not message.get("more_body"):
                # Before the send: the disconnect that ends a complete exchange can be
                # reported while this last send is still in progress.
                self._answered = True
            await send(message)

        try:
            async with cancelled_on_hang_up(scope, receive) as hung_up:
                with trio.move_on_at(self.task.deadline_at) as deadline:
                    await self._run(tracked)
                if deadline.cancelled_caught:
                    await self._timed_out(tracked)
            # A hang-up after a complete answer is the normal end of a request.
            if hung_up.cancelled_caught and not self._answered:
                log.info("client disconnected, task cancelled", task=self.task.task_id)
                self.ctx.counters.client_disconnects += 1
        finally:
            self._timer.done(self._tail)
            if self._holding_slot:
                self.ctx.generation_rate.observe(generation_rate_from_tail(self._tail))
                self.ctx.scheduler.finish(self.task.task_id, tokens_from_tail(self._tail))
                self._holding_slot = False

    async def _open_upstream(self) -> tuple[UpstreamResponse, float]:
        """Start the request at Ollama once the scheduler allows it; requeue while it is busy."""
        sched = self.ctx.scheduler
        waited_s = await sched.wait_turn(self.task.task_id)
        self._timer.turn(waited_s)
        self._holding_slot = True
        for _ in range(MAX_BUSY_RETRIES):
            upstream = await self.ctx.backend.open_stream("POST", self.task.path, self.task.body)
            if upstream.status_code != 503:
                return upstream, waited_s
            await upstream.aclose()
            self._holding_slot = False
            waited_s += await sched.requeue_busy(self.task.task_id)
            self._holding_slot = True
        return upstream, waited_s

    def _headers(self, waited_s: float, content_type: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", content_type.encode()),
            (b"x-meshlb-task-id", self.task.task_id.encode()),
            (b"x-meshlb-node", self.ctx.node_id.encode()),
            (b"x-meshlb-queue-ms", str(round(waited_s * 1000)).encode()),
        ]

    async def _send_error(
        self, send: Send, status: int, message: str, retry_s: int | None = None
    ) -> None:
        headers = self._headers(0.0, "application/json")
        if retry_s is not None:
            headers.append((b"retry-after", str(retry_s).encode()))
        body = json.dumps(error_object(status, message, self.task.path)).encode()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _timed_out(self, send: Send) -> None:
        """504 before the answer began; an error object (never a silent cut) after."""
        self.ctx.counters.timed_out += 1
        message = f"the request did not finish within its timeout of {self.task.timeout_s:g} s"
        log.info("request timed out", task=self.task.task_id, timeout_s=self.task.timeout_s)
        if not self._started:
            await self._send_error(send, 504, message)
        elif not self._answered:
            chunk = stream_error_chunk(message, self.task.path)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _run(self, send: Send) -> None:
        try:
            upstream, waited_s = await self._open_upstream()
        except BackendError as e:
            log.warning("ollama unreachable", task=self.task.task_id, reason=e.reason)
            await self._send_error(send, 503, f"{e}; try again shortly", 5)
            return
        try:
            await self._relay(send, upstream, waited_s)
        except BackendError as e:
            log.warning("ollama failed before answering", task=self.task.task_id, reason=e.reason)
            await self._send_error(send, 503, f"{e}; try again shortly", 5)
        finally:
            with trio.CancelScope(shield=True):
                await upstream.aclose()

    async def _relay(self, send: Send, upstream: UpstreamResponse, waited_s: float) -> None:
        headers = self._headers(waited_s, upstream.headers.get("content-type", "application/json"))
        if "content-encoding" in upstream.headers:
            headers.append((b"content-encoding", upstream.headers["content-encoding"].encode()))
        length = upstream.headers.get("content-length", "")
        if length.isdigit() and int(length) <= WHOLE_BODY_MAX:
            # A non-streamed answer: one write with its length instead of chunked
            # framing (each socket write is a syscall; this is the hot path).
            try:
                body = await upstream.aread()
            except UpstreamError as e:
                raise BackendError(self.ctx.backend.base_url, e.reason) from e
            self._tail = body[-TAIL_BYTES:]
            headers.append((b"content-length", str(len(body)).encode()))
            await send(
                {"type": "http.response.start", "status": upstream.status_code, "headers": headers}
            )
            self.ctx.counters.completed += 1  # before the send: the client may hang up
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await send(
            {"type": "http.response.start", "status": upstream.status_code, "headers": headers}
        )
        try:
            async for chunk in upstream.aiter_raw():
                self._tail = (self._tail + chunk)[-TAIL_BYTES:]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as e:
            reason = e.reason
            log.warning("ollama failed mid-answer", task=self.task.task_id, reason=reason)
            self.ctx.counters.backend_failures += 1
            # Never a silent truncation: end the stream with an Ollama-style error object.
            await send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": stream_error_chunk(
                        f"the Ollama at {self.ctx.backend.base_url} {reason}", self.task.path
                    ),
                }
            )
        else:
            self.ctx.counters.completed += 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})
