"""Ollama metadata answered for the whole mesh: `GET /api/ps` and `POST /api/show`.

A client of any node sees the mesh as one big Ollama: `/api/ps` lists the models
loaded on every live member, one entry per model per host with `"node"` (asked in
parallel with `?local=1`, so never further),
and `/api/show` for a model only a peer has is answered by that peer's Ollama.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshlb.api.body import parse_json_object, read_body, require_model
from meshlb.api.errors import ApiError, retry_after
from meshlb.api.peer_auth import PeerAuth
from meshlb.api.ports import NodeCounters, PeerLink, PeerTable
from meshlb.api.work_errors import ModelCheck
from meshlb.backend.catalog import ModelCatalog, parse_ps
from meshlb.backend.ollama import BackendError, OllamaBackend, describe_http_error
from meshlb.mesh.lookup import gather_from_peers
from meshlb.model_names import canonical_model


@dataclass(frozen=True, slots=True)
class DocsPorts:
    """What `/api/ps` and `/api/show` use of the node."""

    node_id: str
    max_body_bytes: int
    backend: OllamaBackend
    catalog: ModelCatalog
    mesh: PeerTable
    link: PeerLink
    auth: PeerAuth  # `?local=1` is a peer's fan-out: signed
    models: ModelCheck
    counters: NodeCounters


def mesh_docs_routes(ctx: DocsPorts) -> list[Route]:
    return [
        Route("/api/ps", ps_handler(ctx), methods=["GET"]),
        Route("/api/show", show_handler(ctx), methods=["POST"]),
    ]


def ps_handler(ctx: DocsPorts) -> Any:
    async def handler(request: Request) -> Response:
        local_only = request.query_params.get("local") == "1"
        if local_only:
            ctx.auth.require(request)
        docs: list[dict[str, Any]] = []
        problem: BackendError | None = None
        try:
            own = await ctx.backend.get_json("/api/ps")
        except BackendError as e:
            problem = e
        else:
            ctx.catalog.residency.apply(parse_ps(own))  # fresh: placement may use it
            docs.append(with_node(own, ctx.node_id))
        if not local_only:
            docs += await gather_from_peers(
                ctx.link.client, ctx.mesh.alive_peer_urls(), "/api/ps", None, ctx.link.cluster_key
            )
        if not docs:
            raise ApiError(503, f"{problem}; try again shortly", retry_after(5))
        # one entry per model per host (SPEC): where a model is loaded is what matters
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for doc in docs:
            for entry in doc.get("models") or []:
                if isinstance(entry, dict):
                    key = (str(entry.get("node")), canonical_model(str(entry.get("name"))))
                    seen.setdefault(key, entry)
        return JSONResponse({"models": list(seen.values())})

    return handler


def with_node(doc: Any, node_id: str) -> dict[str, Any]:
    """The local Ollama's `/api/ps` answer with this node named in each entry."""
    models = doc.get("models") if isinstance(doc, dict) else None
    return {"models": [{**m, "node": node_id} for m in models or [] if isinstance(m, dict)]}


def show_handler(ctx: DocsPorts) -> Any:
    async def handler(request: Request) -> Response:
        payload = parse_json_object(await read_body(request, ctx.max_body_bytes))
        if "model" not in payload and isinstance(payload.get("name"), str):
            payload["model"] = payload["name"]  # older clients send "name"
        model = require_model(payload)
        if not (await ctx.catalog.knows(model) and ctx.catalog.reachable):
            return await show_on_peer(ctx, model, payload)
        try:
            status, content = await ctx.backend.post_json("/api/show", payload, timeout_s=30)
        except BackendError as e:
            raise ApiError(503, f"{e}; try again shortly", retry_after(5)) from None
        return Response(content, status_code=status, media_type="application/json")

    return handler


async def show_on_peer(ctx: DocsPorts, model: str, payload: dict[str, Any]) -> Response:
    """Ask the first alive peer that gossips the model; 404 as Ollama says it if none."""
    wanted = canonical_model(model)
    peers = ctx.mesh.peers()
    holders = [
        p.node_id
        for p in peers
        if p.state == "alive"
        and p.node_id != ctx.node_id
        and p.meta is not None
        and p.meta.ollama_up
        and wanted in map(canonical_model, p.models)
    ]
    addrs = {p.node_id: p.meta.http_addr for p in peers if p.meta is not None}
    last = ""
    for node_id in holders:
        addr = addrs.get(node_id)
        try:
            r = await ctx.link.client.post(f"http://{addr}/api/show", json=payload, timeout=10.0)
        except httpx.HTTPError as e:
            ctx.counters.show_peer_errors += 1
            last = describe_http_error(e)
            continue
        return Response(r.content, status_code=r.status_code, media_type="application/json")
    if holders:
        raise ApiError(503, f"every node with model '{model}' failed: {last}", retry_after(2))
    await ctx.models.require(model)  # 503 if it is only on hosts that are down
    raise ApiError(404, f"model '{model}' not found")
