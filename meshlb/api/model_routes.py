"""Model management through the mesh: pull, push, create, copy, delete and blobs.

Each operation goes to hosts, not to one Ollama (SPEC, model management): the hosts
come from `X-Meshlb-Hosts` or from who has the model (`meshlb.mesh.model_ops`), and
each host's Ollama is reached THROUGH its node, at the signed internal endpoint
`/v1/internal/ollama/api/...`, because a host's Ollama usually listens on 127.0.0.1
only. That endpoint relays the request to the node's own Ollama and, when it is done,
re-reads the node's model list, so the change is gossiped within a second.

`/api/pull` and `/api/create` fan out in parallel and answer ONE stream in Ollama's
shape (`FanOutStream`); a client that hangs up cancels every host's transfer (the
relayed connections close, so each Ollama sees its client leave). With header
`X-Meshlb-Progress: nodes` (sent by `meshlb pull`) each host's own progress objects
are interleaved too, marked with `"node"`; a host's end is `{"node", "status":
"success"}` or `{"node", "status": "failed", "reason"}` (no `"error"` key, so no
client mistakes it for the stream's end).

Before the final answer the node waits (at most `GOSSIP_WAIT_S`) until its view of
the mesh shows the change on every host that made it, so a request sent right after a
pull is placed on the new hosts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import structlog
import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from meshlb.api.body import parse_json_object, read_body
from meshlb.api.errors import ApiError, error_response
from meshlb.api.forwarded import ForwardedResponse
from meshlb.api.mesh_routes import current_peers
from meshlb.api.peer_auth import require_peer
from meshlb.backend.ollama import describe_http_error
from meshlb.mesh.announce import local_meta
from meshlb.mesh.auth import AUTH_HEADER, sign
from meshlb.mesh.meta import encode_meta
from meshlb.mesh.model_ops import (
    HOSTS_HEADER,
    PER_HOST_PROGRESS,
    PROGRESS_HEADER,
    Host,
    ProgressMerger,
    TargetError,
    canonical,
    failure_sentence,
    hosts_with,
    select_targets,
    valid_model_name,
)
from meshlb.mesh.view import Peer
from meshlb.node_context import NodeContext

log = structlog.get_logger()
INTERNAL_PREFIX = "/v1/internal/ollama"
NODES_HEADER = "X-Meshlb-Nodes"  # on answers: the hosts the operation was done on
GOSSIP_WAIT_S = 3.0
_DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
_RELAYED = re.compile(r"^/api/(pull|push|create|copy|delete|blobs/[^/]+)$")
BLOB_CHUNK = 1 << 20


# ---- the mesh as model management sees it ------------------------------------------


def mesh_hosts(peers: Sequence[Peer]) -> list[Host]:
    """Members as target selection needs them. Gossip carries no model memory in this
    version, so a count of hosts is chosen by fewest models, then least load."""
    out = []
    for p in peers:
        meta = p.meta
        if meta is None:
            continue
        free = None
        out.append(
            Host(
                node_id=p.node_id,
                state=p.state,
                ollama_up=meta.ollama_up,
                models=frozenset(canonical(m) for m in meta.models),
                free_memory_gb=free,
                load=meta.load.queued + meta.load.running,
            )
        )
    return out


def targets_from(request: Request, ctx: NodeContext, model: str) -> list[str]:
    try:
        return select_targets(
            request.headers.get(HOSTS_HEADER), mesh_hosts(current_peers(ctx)), model
        )
    except TargetError as e:
        raise ApiError(e.status, e.message) from None


def host_url(ctx: NodeContext, node_id: str, api_path: str) -> str:
    for p in current_peers(ctx):
        if p.node_id == node_id and p.meta is not None:
            return f"http://{p.meta.http_addr}{INTERNAL_PREFIX}{api_path}"
    raise ApiError(503, f"node {node_id} is no longer in the mesh")


def signed_headers(ctx: NodeContext, method: str, url: str, body: bytes) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    key = ctx.settings.cluster_key
    if key is not None:
        path = httpx.URL(url).raw_path.decode()
        headers[AUTH_HEADER] = sign(key, method, path, body, time.time(), headers)
    return headers


async def await_mesh_view(
    ctx: NodeContext, model: str, hosts: Sequence[str], present: bool
) -> None:
    """Wait until this node's view shows `model` on (or gone from) each of `hosts`."""
    wanted = canonical(model)
    with trio.move_on_after(GOSSIP_WAIT_S):
        await ctx.catalog.refresh()
        while True:
            seen = {p.node_id: set(p.models) for p in current_peers(ctx)}
            if all((wanted in seen.get(h, set())) == present for h in hosts):
                return
            await trio.sleep(0.05)


# ---- request checks -------------------------------------------------------------------


async def read_payload(ctx: NodeContext, request: Request) -> tuple[bytes, dict[str, Any]]:
    body = await read_body(request, ctx.settings.max_body_bytes)
    return body, parse_json_object(body)


def model_field(payload: dict[str, Any], *keys: str) -> str:
    """The model name (`model`, else Ollama's older `name`): 400 if missing or malformed."""
    for key in keys:
        value = payload.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ApiError(400, f"field '{key}' must be a string, not {type(value).__name__}")
        if not valid_model_name(value):
            raise ApiError(400, f"invalid model name {value[:100]!r} in field '{key}'")
        return value
    raise ApiError(400, f"{keys[0]} is required")


def stream_field(payload: dict[str, Any]) -> bool:
    stream = payload.get("stream", True)
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise ApiError(400, f"field 'stream' must be true or false, not {json.dumps(stream)}")
    return stream


def error_of(status: int, content: bytes) -> str:
    try:
        doc = json.loads(content)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])
    except ValueError:
        pass
    return f"answered {status}"


# ---- the streamed fan-out (pull, create) ----------------------------------------------


class FanOutStream:
    """ASGI response: one request sent to several hosts at once, their progress
    streams merged into one (`ProgressMerger`), the client's hang-up cancelling all."""

    def __init__(
        self,
        ctx: NodeContext,
        api_path: str,
        body: bytes,
        targets: list[str],
        stream: bool,
        per_host: bool,
        after: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self.ctx, self.api_path, self.body = ctx, api_path, body
        self.targets, self.stream, self.per_host, self.after = targets, stream, per_host, after
        self.merger = ProgressMerger(targets, api_path.rsplit("/", 1)[-1])
        self.urls = {t: host_url(ctx, t, api_path) for t in targets}
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
        headers = signed_headers(self.ctx, "POST", url, self.body)
        client = self.ctx.peer_client
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


# ---- one request per host (delete, copy, blobs) ---------------------------------------


async def each_host(
    ctx: NodeContext,
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
        url = host_url(ctx, host, api_path)
        headers = signed_headers(ctx, method, url, body)
        payload: Any = content() if content is not None else (body or None)
        try:
            r = await ctx.peer_client.request(method, url, content=payload, headers=headers)
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


async def holders(ctx: NodeContext, model: str) -> list[str]:
    """Live hosts that have `model` (404 as Ollama says it when none does)."""
    await ctx.catalog.knows(model)
    found = hosts_with(model, mesh_hosts(current_peers(ctx)))
    if not found:
        raise ApiError(404, f"model '{model}' not found")
    return found


def done_response(hosts: Sequence[str], status: int = 200) -> Response:
    return Response(status_code=status, headers={NODES_HEADER: ",".join(hosts)})


# ---- the handlers ----------------------------------------------------------------------


def model_routes(ctx: NodeContext) -> list[Route]:
    """The model-management routes of the Ollama API, as mesh operations."""

    def fan_out(
        request: Request, api_path: str, body: bytes, payload: dict[str, Any], name: str
    ) -> FanOutStream:
        stream = stream_field(payload)
        targets = targets_from(request, ctx, name)
        relayed = json.dumps({**payload, "stream": True}).encode()
        per_host = request.headers.get(PROGRESS_HEADER, "").strip().lower() == PER_HOST_PROGRESS

        async def after(succeeded: list[str]) -> None:
            await await_mesh_view(ctx, name, succeeded, present=True)

        return FanOutStream(ctx, api_path, relayed, targets, stream, per_host, after)

    async def pull(request: Request) -> FanOutStream:
        body, payload = await read_payload(ctx, request)
        name = model_field(payload, "model", "name")
        return fan_out(request, "/api/pull", body, payload, name)

    async def create(request: Request) -> FanOutStream:
        body, payload = await read_payload(ctx, request)
        name = model_field(payload, "model", "name")
        return fan_out(request, "/api/create", body, payload, name)

    async def delete(request: Request) -> Response:
        body, payload = await read_payload(ctx, request)
        name = model_field(payload, "model", "name")
        hosts = await holders(ctx, name)
        done, _, failed = split_results(await each_host(ctx, "DELETE", "/api/delete", hosts, body))
        if failed:
            raise ApiError(502, failure_sentence(f"delete of '{name}'", failed, set(done)))
        if not done:
            raise ApiError(404, f"model '{name}' not found")
        await await_mesh_view(ctx, name, done, present=False)
        return done_response(done)

    async def copy(request: Request) -> Response:
        body, payload = await read_payload(ctx, request)
        source = model_field(payload, "source")
        destination = model_field(payload, "destination")
        hosts = await holders(ctx, source)
        done, _, failed = split_results(await each_host(ctx, "POST", "/api/copy", hosts, body))
        if failed:
            raise ApiError(502, failure_sentence(f"copy of '{source}'", failed, set(done)))
        if not done:
            raise ApiError(404, f"model '{source}' not found")
        await await_mesh_view(ctx, destination, done, present=True)
        return done_response(done)

    async def push(request: Request) -> ForwardedResponse:
        body, payload = await read_payload(ctx, request)
        name = model_field(payload, "model", "name")
        stream_field(payload)
        host = (await holders(ctx, name))[0]
        url = host_url(ctx, host, "/api/push")
        req = ctx.peer_client.build_request(
            "POST", url, content=body, headers=signed_headers(ctx, "POST", url, body)
        )
        try:
            upstream = await ctx.peer_client.send(req, stream=True)
        except httpx.HTTPError as e:
            raise ApiError(
                503, f"node {host}, which has '{name}', {describe_http_error(e)}"
            ) from None
        return ForwardedResponse(upstream, host, None, "/api/push")

    def digest_of(request: Request) -> str:
        digest = str(request.path_params["digest"])
        if not _DIGEST.match(digest):
            raise ApiError(400, f"invalid digest format {digest[:100]!r}: expected sha256:<64 hex>")
        return digest.replace("-", ":", 1)

    async def head_blob(request: Request) -> Response:
        digest = digest_of(request)
        hosts = targets_from(request, ctx, "")
        done, missing, failed = split_results(
            await each_host(ctx, "HEAD", f"/api/blobs/{digest}", hosts)
        )
        if failed:
            raise ApiError(502, failure_sentence("blob check", failed, set(done)))
        return done_response(done, 200 if not missing else 404)

    async def post_blob(request: Request) -> Response:
        digest = digest_of(request)
        hosts = targets_from(request, ctx, "")
        fd, spool = tempfile.mkstemp(prefix="meshlb-blob-")
        os.close(fd)
        try:
            got = await spool_body(request, spool)
            if got != digest:
                raise ApiError(400, f"digest mismatch, expected {digest!r}, got {got!r}")

            async def content() -> AsyncIterator[bytes]:
                async with await trio.open_file(spool, "rb") as f:
                    while chunk := await f.read(BLOB_CHUNK):
                        yield chunk

            results = await each_host(ctx, "POST", f"/api/blobs/{digest}", hosts, content=content)
        finally:
            os.unlink(spool)
        done, _, failed = split_results(results)
        if failed:
            raise ApiError(502, failure_sentence("blob upload", failed, set(done)))
        created = any(s == 201 for s, _ in results.values())
        return done_response(done, 201 if created else 200)

    return [
        Route("/api/pull", pull, methods=["POST"]),
        Route("/api/push", push, methods=["POST"]),
        Route("/api/create", create, methods=["POST"]),
        Route("/api/copy", copy, methods=["POST"]),
        Route("/api/delete", delete, methods=["DELETE"]),
        Route("/api/blobs/{digest}", head_blob, methods=["HEAD"]),
        Route("/api/blobs/{digest}", post_blob, methods=["POST"]),
    ]


async def spool_body(request: Request, path: str) -> str:
    """Write the request body to `path`; its digest as `sha256:<hex>`."""
    sha = hashlib.sha256()
    async with await trio.open_file(path, "wb") as f:
        async for chunk in request.stream():
            sha.update(chunk)
            await f.write(chunk)
    return f"sha256:{sha.hexdigest()}"


# ---- the node-to-node relay to this node's own Ollama ---------------------------------


class _RefreshAfter:
    """ASGI wrapper: answer with `inner`, then re-read this node's model list."""

    def __init__(self, inner: ForwardedResponse, ctx: NodeContext) -> None:
        self.inner, self.ctx = inner, ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        before = self.ctx.catalog.names
        try:
            await self.inner(scope, receive, send)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.ctx.catalog.refresh()
            if self.ctx.catalog.names != before:
                announce_now(self.ctx)


def announce_now(ctx: NodeContext) -> None:
    """Gossip this node's metadata at once after its model list changed, instead of at
    the announcer's next tick (up to a second later): the node that asked for the
    change waits for it to show. The announcer's next tick pushes the same bytes once
    more (one extra incarnation bump per operation, nothing else)."""
    if ctx.gossip is None:
        return
    try:
        ctx.gossip.update_meta(encode_meta(local_meta(ctx)))
    except Exception as e:  # the announcer retries on its tick; never fail the answer
        log.warning("could not announce the new model list at once", error=repr(e))


def internal_model_routes(ctx: NodeContext) -> list[Route]:
    """`/v1/internal/ollama/api/...`: a peer's model operation on this node's Ollama.

    Signed like every node-to-node request; a blob upload is signed over an empty body
    (its content is bound by the digest in the signed path, and Ollama checks it), so
    gigabytes are streamed through, never buffered. Only management paths are relayed.
    """
    client = httpx.AsyncClient(
        base_url=ctx.backend.base_url, timeout=httpx.Timeout(None, connect=5.0)
    )

    async def relay(request: Request) -> Any:
        api_path = "/" + str(request.path_params["path"])
        if not _RELAYED.match(api_path):
            raise ApiError(404, f"no such endpoint: {request.method} {request.url.path}")
        content: Any
        if request.method == "POST" and api_path.startswith("/api/blobs/"):
            require_peer(ctx, request, b"", "model operation")
            content = request.stream()
        else:
            content = await read_body(request, ctx.settings.max_body_bytes)
            require_peer(ctx, request, content, "model operation")
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        upstream_req = client.build_request(
            request.method, api_path, content=content, headers=headers
        )
        try:
            upstream = await client.send(upstream_req, stream=True)
        except httpx.HTTPError as e:
            return error_response(
                502, f"the Ollama at {ctx.backend.base_url} {describe_http_error(e)}"
            )
        response = ForwardedResponse(upstream, ctx.node_id, None, api_path)
        return response if request.method == "HEAD" else _RefreshAfter(response, ctx)

    return [Route(INTERNAL_PREFIX + "/{path:path}", relay, methods=["POST", "DELETE", "HEAD"])]
