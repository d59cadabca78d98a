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
import os
import re
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshlb.api.body import parse_json_object, read_body
from meshlb.api.errors import ApiError
from meshlb.api.forwarded import ForwardedResponse
from meshlb.api.model_fanout import FanOutStream, HostLink, each_host, split_results
from meshlb.api.ports import PeerLink, PeerTable
from meshlb.backend.catalog import ModelCatalog
from meshlb.backend.ollama import describe_http_error
from meshlb.mesh.model_ops import (
    HOSTS_HEADER,
    PER_HOST_PROGRESS,
    PROGRESS_HEADER,
    Host,
    TargetError,
    canonical,
    failure_sentence,
    hosts_with,
    select_targets,
    valid_model_name,
)
from meshlb.mesh.view import Peer

log = structlog.get_logger()
NODES_HEADER = "X-Meshlb-Nodes"  # on answers: the hosts the operation was done on
GOSSIP_WAIT_S = 3.0
_DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
BLOB_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelPorts:
    """What model management uses of the node."""

    max_body_bytes: int
    catalog: ModelCatalog
    mesh: PeerTable
    link: PeerLink


# ---- the mesh as model management sees it ------------------------------------------


def mesh_hosts(peers: Sequence[Peer]) -> list[Host]:
    """Members as target selection needs them (free memory: the gossiped model memory
    less what is loaded; unknown for a host that gossips none, and then a count of
    hosts is chosen by fewest models, then least load)."""
    out = []
    for p in peers:
        meta = p.meta
        if meta is None:
            continue
        free = None
        if meta.memory_gb is not None and meta.resident is not None:
            free = max(0.0, meta.memory_gb - sum(r.size_gb for r in meta.resident))
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


def targets_from(request: Request, ctx: ModelPorts, model: str) -> list[str]:
    try:
        return select_targets(
            request.headers.get(HOSTS_HEADER), mesh_hosts(ctx.mesh.peers()), model
        )
    except TargetError as e:
        raise ApiError(e.status, e.message) from None


async def await_mesh_view(ctx: ModelPorts, model: str, hosts: Sequence[str], present: bool) -> None:
    """Wait until this node's view shows `model` on (or gone from) each of `hosts`."""
    wanted = canonical(model)
    with trio.move_on_after(GOSSIP_WAIT_S):
        await ctx.catalog.refresh()
        while True:
            seen = {p.node_id: set(p.models) for p in ctx.mesh.peers()}
            if all((wanted in seen.get(h, set())) == present for h in hosts):
                return
            await trio.sleep(0.05)


# ---- request checks -------------------------------------------------------------------


async def read_payload(ctx: ModelPorts, request: Request) -> tuple[bytes, dict[str, Any]]:
    body = await read_body(request, ctx.max_body_bytes)
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


async def holders(ctx: ModelPorts, model: str) -> list[str]:
    """Live hosts that have `model` (404 as Ollama says it when none does)."""
    await ctx.catalog.knows(model)
    found = hosts_with(model, mesh_hosts(ctx.mesh.peers()))
    if not found:
        raise ApiError(404, f"model '{model}' not found")
    return found


def done_response(hosts: Sequence[str], status: int = 200) -> Response:
    return Response(status_code=status, headers={NODES_HEADER: ",".join(hosts)})


# ---- the handlers ----------------------------------------------------------------------


def model_routes(ctx: ModelPorts) -> list[Route]:
    """The model-management routes of the Ollama API, as mesh operations."""
    reach = HostLink(ctx.mesh, ctx.link)

    def fan_out(
        request: Request, api_path: str, body: bytes, payload: dict[str, Any], name: str
    ) -> FanOutStream:
        stream = stream_field(payload)
        targets = targets_from(request, ctx, name)
        relayed = json.dumps({**payload, "stream": True}).encode()
        per_host = request.headers.get(PROGRESS_HEADER, "").strip().lower() == PER_HOST_PROGRESS

        async def after(succeeded: list[str]) -> None:
            await await_mesh_view(ctx, name, succeeded, present=True)

        return FanOutStream(reach, api_path, relayed, targets, stream, per_host, after)

    async def pull(request: Request) -> FanOutStream:
        body, payload = await read_payload(ctx, request)
        name = model_field(payload, "model", "name")
        return fan_out(request, "/api/pull", body, payload, name)

    async def create(request: Request) -> FanOutStream:
        body, payload = await read_payload(ctx, request)
        name = model_field(payload, "model", "name")
        return fan_out(request, "/api/create", body, payload, name)

    async def on_holders(model: str, method: str, path: str, body: bytes, what: str) -> list[str]:
        """Run the request on every host that has `model`: the hosts it succeeded on;
        502 naming the hosts that failed, 404 when no host has the model."""
        hosts = await holders(ctx, model)
        done, _, failed = split_results(await each_host(reach, method, path, hosts, body))
        if failed:
            raise ApiError(502, failure_sentence(what, failed, set(done)))
        if not done:
            raise ApiError(404, f"model '{model}' not found")
        return done

    async def delete(request: Request) -> Response:
        body, payload = await read_payload(ctx, request)
        name = model_field(payload, "model", "name")
        done = await on_holders(name, "DELETE", "/api/delete", body, f"delete of '{name}'")
        await await_mesh_view(ctx, name, done, present=False)
        return done_response(done)

    async def copy(request: Request) -> Response:
        body, payload = await read_payload(ctx, request)
        source = model_field(payload, "source")
        destination = model_field(payload, "destination")
        done = await on_holders(source, "POST", "/api/copy", body, f"copy of '{source}'")
        await await_mesh_view(ctx, destination, done, present=True)
        return done_response(done)

    async def push(request: Request) -> ForwardedResponse:
        body, payload = await read_payload(ctx, request)
        name = model_field(payload, "model", "name")
        stream_field(payload)
        host = (await holders(ctx, name))[0]
        url = reach.url(host, "/api/push")
        req = ctx.link.client.build_request(
            "POST", url, content=body, headers=reach.signed_headers("POST", url, body)
        )
        try:
            upstream = await ctx.link.client.send(req, stream=True)
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
            await each_host(reach, "HEAD", f"/api/blobs/{digest}", hosts)
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

            results = await each_host(reach, "POST", f"/api/blobs/{digest}", hosts, content=content)
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
