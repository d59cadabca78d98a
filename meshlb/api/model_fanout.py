"""One model operation sent to several hosts' nodes at once (model management).

Each host's Ollama is reached through its node's signed internal endpoint
(`INTERNAL_PREFIX`, `meshlb.api.model_relay`). `FanOutStream` streams pull and create
(progress merged into one Ollama-shaped stream, a client's hang-up cancelling every
host); `each_host` sends delete, copy and blob requests and collects the answers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
import trio
from starlette.types import Receive, Scope, Send

from meshlb.api.errors import ApiError
from meshlb.api.ports import PeerLink, PeerTable
from meshlb.backend.ollama import describe_http_error
from meshlb.mesh.auth import AUTH_HEADER, sign
from meshlb.mesh.model_ops import ProgressMerger

log = structlog.get_logger()
INTERNAL_PREFIX = "/v1/internal/ollama"


@dataclass(frozen=True, slots=True)
class HostLink:
    """How to reach a host's Ollama through its node: its address, signed requests."""

    mesh: PeerTable
    link: PeerLink
    wall_clock: Callable[[], float] = time.time

    def url(self, node_id: str, api_path: str) -> str:
        addr = self.mesh.address_of(node_id)
        if addr is None:
            raise ApiError(503, f"node {node_id} is no longer in the mesh")
        return f"http://{addr}{INTERNAL_PREFIX}{api_path}"

    def signed_headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        key = self.link.cluster_key
        if key is not None:
            path = httpx.URL(url).raw_path.decode()
            headers[AUTH_HEADER] = sign(key, method, path, body, self.wall_clock(), headers)
        return headers


def error_of(status: int, content: bytes) -> str:
    try:
        doc = json.loads(content)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])
    except ValueError:
        pass
    return f"answered {status}"


class FanOutStream:
    """ASGI response: one request sent to several hosts at once, their progress
    streams merged into one (`ProgressMerger`), the client's hang-up cancelling all."""

    def __init__(
        self,
        hosts: HostLink,
        api_path: str,
        body: bytes,
        targets: list[str],
        stream: bool,
        per_host: bool,
        after: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self.hosts, self.api_path, self.body = hosts, api_path, body
        self.targets, self.stream, self.per_host, self.after = targets, stream, per_host, after
        self.merger = ProgressMerger(targets, api_path.rsplit("/", 1)[-1])
        self.urls = {t: hosts.url(t, api_path) for t in targets}
        self.finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send_events, events = trio.open_memory_channel[tuple[str, dict[str, Any] | None, str]](
            math.inf
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            async with send_events:
                for host in self.targets:
                    nursery.start_soon(self._one_host, host, send_events.clone())
            if self.stream:
                await self._start(send, 200)
            async for host, event, reason in events:
                if event is not None:
                    await self._emit(send, self.merger.feed(host, event))
                    if self.per_host:
                        await self._emit(send, [self._host_line(host, event)])
                else:
                    await self._host_ended(send, host, reason)
            final = self.merger.final()
            self.finished = True
            log.info("mesh model operation", path=self.api_path, hosts=self.targets, result=final)
            await self.after(sorted(self.merger.succeeded))
            if self.stream:
                await self._emit(send, [final])
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await self._start(send, 500 if "error" in final else 200)
                await send({"type": "http.response.body", "body": json.dumps(final).encode()})
            nursery.cancel_scope.cancel()

    def _host_line(self, host: str, event: dict[str, Any]) -> dict[str, Any]:
        if "error" in event:
            return {"node": host, "status": "failed", "reason": str(event["error"])}
        return {"node": host, **event}

    async def _host_ended(self, send: Send, host: str, reason: str) -> None:
        known = host in self.merger.failed or host in self.merger.succeeded
        await self._emit(send, self.merger.end(host, reason))
        if self.per_host and not known:
            await self._emit(send, [{"node": host, "status": "failed", "reason": reason}])

    async def _start(self, send: Send, status: int) -> None:
        media = b"application/x-ndjson" if self.stream else b"application/json; charset=utf-8"
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", media)]}
        )

    async def _emit(self, send: Send, objects: list[dict[str, Any]]) -> None:
        if self.stream and objects:
            data = b"".join(json.dumps(o).encode() + b"\n" for o in objects)
            await send({"type": "http.response.body", "body": data, "more_body": True})

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.finished:
            log.info("client hung up: cancelling the operation on every host", path=self.api_path)
        scope.cancel()

    async def _one_host(
        self, host: str, out: trio.MemorySendChannel[tuple[str, dict[str, Any] | None, str]]
    ) -> None:
        """Relay one host's stream as (host, event, "") and end with (host, None, reason)."""
        async with out:
            reason = await self._relay_host(host, out)
            await out.send((host, None, reason))

    async def _relay_host(
        self, host: str, out: trio.MemorySendChannel[tuple[str, dict[str, Any] | None, str]]
    ) -> str:
        url = self.urls[host]
        headers = self.hosts.signed_headers("POST", url, self.body)
        client = self.hosts.link.client
        ended = False
        try:
            async with client.stream("POST", url, content=self.body, headers=headers) as r:
                if r.status_code >= 400:
                    return error_of(r.status_code, await r.aread())
                async for line in r.aiter_lines():
                    event = _parse_line(line)
                    if event is None:
                        continue
                    await out.send((host, event, ""))
                    ended = ended or "error" in event or event.get("status") == "success"
        except httpx.HTTPError as e:
            return f"node {host} stopped answering mid-operation: it {describe_http_error(e)}"
        return "" if ended else f"node {host} ended its stream without success"


def _parse_line(line: str) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


async def each_host(
    hosts_link: HostLink,
    method: str,
    api_path: str,
    hosts: Sequence[str],
    body: bytes = b"",
    content: Callable[[], AsyncIterator[bytes]] | None = None,
) -> dict[str, tuple[int, str]]:
    """Send the same request to every host at once: host -> (status, error or "").

    Status 0 means the host's node could not be reached."""
    results: dict[str, tuple[int, str]] = {}

    async def one(host: str) -> None:
        url = hosts_link.url(host, api_path)
        headers = hosts_link.signed_headers(method, url, body)
        payload: Any = content() if content is not None else (body or None)
        try:
            r = await hosts_link.link.client.request(method, url, content=payload, headers=headers)
        except httpx.HTTPError as e:
            results[host] = (0, f"its node {describe_http_error(e)}")
            return
        results[host] = (
            r.status_code,
            "" if r.status_code < 400 else error_of(r.status_code, r.content),
        )

    async with trio.open_nursery() as nursery:
        for host in hosts:
            nursery.start_soon(one, host)
    return results


def split_results(
    results: dict[str, tuple[int, str]],
) -> tuple[list[str], list[str], dict[str, str]]:
    """(done, not found there, failed with reason)."""
    done = sorted(h for h, (s, _) in results.items() if 200 <= s < 300)
    missing = sorted(h for h, (s, _) in results.items() if s == 404)
    failed = {h: why for h, (s, why) in results.items() if s != 404 and not 200 <= s < 300}
    return done, missing, failed
