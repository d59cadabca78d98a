"""The simulator's model management: pull, push, create, copy, delete, blobs.

Why: the mesh turns these into fan-out operations over hosts, so each host must answer
them as Ollama does (server/routes.go, docs/api.md): `/api/pull` streams
`{"status": "pulling manifest"}`, then per layer `{"status": "pulling <12 hex>",
"digest", "total", "completed"}`, then "verifying sha256 digest", "writing manifest",
"success"; `stream: false` gives only the last object (or a 500 with the error). A name
outside the library (sim_catalog plus the models given at start) fails with the
registry's "file does not exist". Downloads take size / `--pull-mbps`; `--fail-pulls`
(a test aid) makes every pull and push fail half-way, as a dropped connection does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from meshlb.backend.sim_catalog import DEFAULT_SIZES_GB
from meshlb.backend.sim_engine import ModelSpec, canonical_name
from meshlb.backend.sim_parse import (
    JSON_UTF8,
    ApiError,
    dumps,
    field_of,
    json_response,
    read_json,
)
from meshlb.backend.sim_runtime import SimState, sized_spec

NOT_IN_REGISTRY = "pull model manifest: file does not exist"
INVALID_NAME = "invalid model name"
FAILED_PULL = "max retries exceeded: simulated connection reset (--fail-pulls)"
_DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)*(:[\w.\-]+)?$")
TICK_S = 0.1  # how often a download reports progress


def valid_name(name: str) -> bool:
    return bool(name) and len(name) < 350 and bool(_NAME.match(name))


def layers(spec: ModelSpec) -> list[tuple[str, int]]:
    """(digest, size) of a model's layers: weights, template, license, params, config."""
    small = [("template", 1_400), ("license", 7_700), ("params", 96), ("config", 485)]
    weights = max(spec.size - sum(n for _, n in small), 1)
    out = [(f"sha256:{hashlib.sha256(f'{spec.name}:weights'.encode()).hexdigest()}", weights)]
    out += [
        (f"sha256:{hashlib.sha256(f'{spec.name}:{k}'.encode()).hexdigest()}", n) for k, n in small
    ]
    return out


def management_routes(state: SimState) -> list[Route]:
    """Routes for pull, push, create, copy, delete and blobs over one simulator."""
    config = state.config
    blobs: dict[str, int] = {}  # digest -> size, of uploaded blobs
    library = {canonical_name(n) for n in DEFAULT_SIZES_GB} | set(state.specs)

    def stream_or_wait(body: dict[str, Any], events: AsyncIterator[dict[str, Any]]) -> Response:
        """NDJSON progress, or (stream false) the last object / the error as a 500."""
        if field_of(body, "stream", bool, "api.PullRequest", True):

            async def ndjson() -> AsyncIterator[bytes]:
                async for event in events:
                    yield dumps(event) + b"\n"

            return StreamingResponse(ndjson(), media_type="application/x-ndjson")

        async def wait() -> Response:
            last: dict[str, Any] = {}
            async for event in events:
                if "error" in event:
                    return json_response(event, 500)
                last = event
            return json_response(last)

        return _Deferred(wait)

    async def transfer(verb: str, spec: ModelSpec, have: bool) -> AsyncIterator[dict[str, Any]]:
        """Per layer progress at --pull-mbps; layers already present complete at once."""
        rate = config.pull_mbps * 1e6
        for digest, total in layers(spec):
            status = f"{verb} {digest[7:19]}"
            yield {"status": status, "digest": digest, "total": total}
            done = total if have or rate <= 0 else 0
            while done < total:
                step = min(total - done, max(int(rate * TICK_S), 1))
                await trio.sleep(step / rate)
                done += step
                if config.fail_pulls and done >= total // 2:
                    yield {"error": FAILED_PULL}
                    return
                yield {"status": status, "digest": digest, "total": total, "completed": done}
            if have or rate <= 0:
                if config.fail_pulls:
                    yield {"error": FAILED_PULL}
                    return
                yield {"status": status, "digest": digest, "total": total, "completed": total}

    async def pulling(name: str) -> AsyncIterator[dict[str, Any]]:
        canon = canonical_name(name)
        yield {"status": "pulling manifest"}
        if canon not in library:
            yield {"error": NOT_IN_REGISTRY}
            return
        have = canon in state.specs
        spec = state.specs.get(canon) or sized_spec(canon, None)
        async for event in transfer("pulling", spec, have):
            yield event
            if "error" in event:
                return
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        state.specs[canon] = spec
        yield {"status": "success"}

    async def pull(request: Request) -> Response:
        body = await read_json(request, "api.PullRequest")
        name = str(field_of(body, "model", str, "api.PullRequest", "")) or str(
            field_of(body, "name", str, "api.PullRequest", "")
        )
        if not valid_name(name):
            raise ApiError(400, INVALID_NAME)
        return stream_or_wait(body, pulling(name))

    async def pushing(name: str) -> AsyncIterator[dict[str, Any]]:
        yield {"status": "retrieving manifest"}
        spec = state.lookup(name)
        if spec is None:
            yield {"error": f"model '{name}' not found"}
            return
        async for event in transfer("pushing", spec, False):
            yield event
            if "error" in event:
                return
        yield {"status": "pushing manifest"}
        yield {"status": "success"}

    async def push(request: Request) -> Response:
        body = await read_json(request, "api.PushRequest")
        name = str(field_of(body, "model", str, "api.PushRequest", "")) or str(
            field_of(body, "name", str, "api.PushRequest", "")
        )
        if not name:
            raise ApiError(400, "model is required")
        return stream_or_wait(body, pushing(name))

    async def delete(request: Request) -> Response:
        body = await read_json(request, "api.DeleteRequest")
        name = str(field_of(body, "model", str, "api.DeleteRequest", "")) or str(
            field_of(body, "name", str, "api.DeleteRequest", "")
        )
        if not valid_name(name):
            raise ApiError(400, f"name {_go_quote(name)} is invalid")
        if state.specs.pop(canonical_name(name), None) is None:
            raise ApiError(404, f"model '{name}' not found")
        return Response(status_code=200)

    async def copy(request: Request) -> Response:
        body = await read_json(request, "api.CopyRequest")
        src = str(field_of(body, "source", str, "api.CopyRequest", ""))
        dst = str(field_of(body, "destination", str, "api.CopyRequest", ""))
        for role, name in (("source", src), ("destination", dst)):
            if not valid_name(name):
                raise ApiError(400, f"{role} {_go_quote(name)} is invalid")
        spec = state.lookup(src)
        if spec is None:
            raise ApiError(404, f"model {_go_quote(src)} not found")
        canon = canonical_name(dst)
        state.specs[canon] = dataclasses.replace(spec, name=canon)
        return Response(status_code=200)

    def digest_of(request: Request) -> str:
        digest = str(request.path_params["digest"])
        if not _DIGEST.match(digest):
            raise ApiError(400, "invalid digest format")
        return digest.replace("-", ":", 1)

    async def head_blob(request: Request) -> Response:
        digest = digest_of(request)
        if digest not in blobs:
            raise ApiError(404, f"blob {_go_quote(request.path_params['digest'])} not found")
        return Response(status_code=200)

    async def create_blob(request: Request) -> Response:
        digest = digest_of(request)
        if digest in blobs:
            return Response(status_code=200)
        data = await request.body()
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != digest:
            want = _go_quote(request.path_params["digest"])
            raise ApiError(400, f"digest mismatch, expected {want}, got {_go_quote(got)}")
        blobs[digest] = len(data)
        return Response(status_code=201)

    async def creating(
        name: str, base: ModelSpec | None, files: dict[str, str], extra: int
    ) -> AsyncIterator[dict[str, Any]]:
        for digest, _ in layers(base) if base else []:
            yield {"status": f"using existing layer {digest}"}
        for digest in files.values():
            yield {"status": f"using existing layer {digest}"}
        for _ in range(extra):
            yield {
                "status": f"creating new layer sha256:{hashlib.sha256(name.encode()).hexdigest()}"
            }
        yield {"status": "writing manifest"}
        size = (base.size if base else 0) + sum(blobs[d] for d in files.values())
        canon = canonical_name(name)
        spec = base or sized_spec(canon, size)
        state.specs[canon] = dataclasses.replace(spec, name=canon, size=max(size, 1))
        yield {"status": "success"}

    async def create(request: Request) -> Response:
        go = "api.CreateRequest"
        body = await read_json(request, go)
        name = str(field_of(body, "model", str, go, "")) or str(field_of(body, "name", str, go, ""))
        if not valid_name(name):
            raise ApiError(400, INVALID_NAME)
        source = str(field_of(body, "from", str, go, ""))
        files = field_of(body, "files", dict, go, {})
        if not source and not files:
            raise ApiError(400, "neither 'from' or 'files' was specified")
        for digest in files.values():
            if not isinstance(digest, str) or digest.replace("-", ":", 1) not in blobs:
                raise ApiError(400, f"blob {_go_quote(str(digest))} not found")
        base = state.lookup(source) if source else None
        if source and base is None:
            if canonical_name(source) not in library:
                raise ApiError(404, f"model '{source}' not found")
            base = sized_spec(canonical_name(source), None)
        extra = sum(1 for k in ("template", "system", "parameters", "license") if body.get(k))
        files = {k: str(v).replace("-", ":", 1) for k, v in files.items()}
        return stream_or_wait(body, creating(name, base, files, extra))

    return [
        Route("/api/pull", pull, methods=["POST"]),
        Route("/api/push", push, methods=["POST"]),
        Route("/api/create", create, methods=["POST"]),
        Route("/api/copy", copy, methods=["POST"]),
        Route("/api/delete", delete, methods=["DELETE"]),
        Route("/api/blobs/{digest}", head_blob, methods=["HEAD"]),
        Route("/api/blobs/{digest}", create_blob, methods=["POST"]),
    ]


def _go_quote(text: str) -> str:
    """Go's %q for the plain strings these messages quote."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Deferred(Response):
    """A response computed when sent (so `stream: false` waits inside the ASGI call)."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        response: Response = await self._make()
        await response(scope, receive, send)


__all__ = ["JSON_UTF8", "management_routes"]
