"""The task API: `POST /v1/tasks`, `GET /v1/tasks[/{id}]`, `DELETE /v1/tasks/{id}`.

Validation splits by kind of mistake, as SPEC.md says: a missing field or a value of
the wrong type is 400 (malformed), a well-typed value outside its range is 422.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgpack
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshlb.api.body import (
    PRIORITY_HEADER,
    parse_hops,
    parse_json_object,
    parse_priority,
    read_body,
)
from meshlb.api.errors import ApiError, retry_after
from meshlb.api.idempotency import KeyArbiter, merge_task_rows
from meshlb.api.peer_auth import PeerAuth
from meshlb.api.ports import Drain, NodeCounters, PeerLink, PeerTable
from meshlb.api.work_errors import ModelCheck, refused_to_error
from meshlb.backend.catalog import ModelCatalog
from meshlb.mesh.forward import HOPS_HEADER
from meshlb.mesh.lookup import ask_peers, find_on_peers, gather_from_peers
from meshlb.mesh.placement_service import PlacementService
from meshlb.sched.driver import Refused
from meshlb.tasks.model import FINAL_STATES
from meshlb.tasks.service import TaskService, TaskSpec
from meshlb.tokens import estimate_tokens

log = structlog.get_logger()
MAX_WAIT_S = 300.0
TYPE_ERRORS = ("missing", "type", "parsing", "extra_forbidden", "literal_error", "_type")
STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class OwnershipFacts(Protocol):
    """What the task routes read of the ownership protocol beyond the task service."""

    def is_live(self, node_id: str) -> bool:
        """Whether the ownership core counts `node_id` live (it can be handed a task)."""
        ...

    def holders(self, task_id: str) -> object:
        """Who holds a copy of the task, and as what (for a log line)."""
        ...


@dataclass(frozen=True, slots=True)
class TaskPorts:
    """What the task API uses of the node."""

    node_id: str
    max_body_bytes: int
    default_num_predict: int
    drain: Drain
    auth: PeerAuth  # a forwarded submission or `?local=1` lookup must be signed
    catalog: ModelCatalog
    placement: PlacementService
    ownership: OwnershipFacts
    service: TaskService
    keys: KeyArbiter
    mesh: PeerTable
    link: PeerLink
    models: ModelCheck
    counters: NodeCounters


class TaskSubmitBody(BaseModel):
    """`POST /v1/tasks` body (SPEC.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["generate", "chat", "embed"]
    model: str = Field(min_length=1)
    request: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=1, le=10)
    timeout_s: float | int | None = Field(default=None, gt=0, le=7 * 86400)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


def validation_error(e: ValidationError) -> ApiError:
    """400 for malformed fields, 422 for out-of-range values; the message names the field."""
    first = e.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    status = 400 if any(t in first["type"] for t in TYPE_ERRORS) else 422
    if first["type"] == "extra_forbidden":
        return ApiError(400, f"unknown field '{field}'")
    return ApiError(status, f"field '{field}': {first['msg']}")


def parse_wait(raw: str | None) -> float:
    if raw is None:
        return 0.0
    try:
        wait_s = float(raw)
    except ValueError:
        raise ApiError(
            400, f"query parameter wait must be a number of seconds, got {raw!r}"
        ) from None
    if not math.isfinite(wait_s) or not 0 <= wait_s <= MAX_WAIT_S:
        raise ApiError(422, f"query parameter wait must be from 0 to {MAX_WAIT_S:g} seconds")
    return wait_s


def choose_owner(
    ctx: TaskPorts, kind: str, model: str, request: dict[str, Any], *, here: bool = True
) -> str | None:
    """The peer placement prefers for a new async task, or None to keep it here
    (the same service as Ollama-API requests: expected completion, power of two).
    `here=False`: this node is full, so the best peer, or None if there is none.
    A node that cannot run the model itself (its Ollama lacks it or is down) always
    names a peer, or refuses with 503: it never queues work it cannot run."""
    local_can = ctx.catalog.reachable and ctx.catalog.has(model)
    est = estimate_tokens({**request, "model": model}, kind, ctx.default_num_predict)
    exclude = frozenset() if here and local_can else frozenset({ctx.node_id})
    to = ctx.placement.place(model, est, exclude=exclude).peer
    # Only a peer the ownership core counts as live can be handed a task.
    if to is not None and not ctx.ownership.is_live(to):
        to = None
    if to is None and not local_can:
        raise ApiError(
            503,
            f"no live node can take a task for model '{model}' right now; try again shortly",
            retry_after(2),
        )
    if to is not None:
        ctx.placement.sent(to)
    return to


def carries(value: Any) -> bool:
    """Can the request travel between nodes (msgpack: integers up to 64 bits)?"""
    try:
        msgpack.packb(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


# Task ids are `t-` and hex; anything else (a NUL, a slash, 10 kB of text) cannot name
# a task and must not reach a peer's URL: 404 at once.
TASK_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def task_id_of(request: Request) -> str:
    task_id = str(request.path_params["task_id"])
    if TASK_ID.fullmatch(task_id) is None:
        shown = task_id[:40].encode("unicode_escape").decode("ascii")
        raise ApiError(404, f"task '{shown}' not found")
    return task_id


def task_routes(ctx: TaskPorts) -> list[Route]:
    service, keys = ctx.service, ctx.keys

    def not_found(task_id: str) -> ApiError:
        return ApiError(404, f"task '{task_id}' not found")

    async def submit(request: Request) -> Response:
        if ctx.drain.active:
            raise ApiError(
                503,
                "this node is shutting down; send the task to another node",
                {"Retry-After": "1"},
            )
        raw = await read_body(request, ctx.max_body_bytes)
        hops = parse_hops(request.headers.get(HOPS_HEADER))
        if hops:
            ctx.auth.require(request, raw)
        payload = parse_json_object(raw)
        try:
            body = TaskSubmitBody.model_validate(payload)
        except ValidationError as e:
            raise validation_error(e) from None
        if not carries(body.request):
            raise ApiError(422, "field 'request' holds a number too large to carry (over 64 bits)")
        priority = body.priority or parse_priority(request.headers.get(PRIORITY_HEADER))
        await ctx.models.require(body.model)
        spec = TaskSpec(
            kind=body.kind,
            model=body.model,
            request=body.request,
            priority=priority,
            timeout_s=body.timeout_s,
            idempotency_key=body.idempotency_key,
        )
        key = body.idempotency_key
        if key is None:
            return await create(spec)
        if not hops:
            answer = await keys.pass_to_arbiter(key, raw, request.headers.get(PRIORITY_HEADER))
            if answer is not None:
                return answer
        async with keys.deciding(key):
            found = await keys.find(key)
            if found is not None:
                ctx.counters.tasks_idempotent_hits += 1
                return task_answer(found, 200)
            return await create(spec)

    async def create(spec: TaskSpec) -> Response:
        """Make the task; 202 only once a second node holds it (or the journal does)."""
        forward_to = choose_owner(ctx, spec.kind, spec.model, spec.request)
        try:
            record, created, safe = await service.submit(spec, forward_to)
        except Refused as refused:
            # Full here: a peer with room takes it; 503 only if every one is full.
            forward_to = choose_owner(ctx, spec.kind, spec.model, spec.request, here=False)
            if forward_to is None:
                raise refused_to_error(refused) from None
            record, created, safe = await service.submit(spec, forward_to)
        if not created:
            ctx.counters.tasks_idempotent_hits += 1
            return task_answer(record.to_public(), 200)
        if not safe:
            return await refuse_unreplicated(record.id, spec)
        ctx.counters.tasks_accepted += 1
        return task_answer(record.to_public(), 202)

    async def refuse_unreplicated(task_id: str, spec: TaskSpec) -> Response:
        """No second holder in time: 503, nothing promised. A keyed task stays (a
        retry with its key gets it); an unkeyed one is cancelled where it is ours."""
        ctx.counters.tasks_refused_unreplicated += 1
        log.warning(
            "task refused: no second node held it in time",
            task=task_id,
            keyed=spec.idempotency_key is not None,
            holders=ctx.ownership.holders(task_id),
        )
        if spec.idempotency_key is None and service.owns(task_id):
            await service.cancel(task_id)
        raise ApiError(
            503,
            "the task could not be copied to a second node in time, so it was not accepted; "
            "retry (with the same idempotency_key to get this same task)",
            retry_after(1),
        )

    def task_answer(task: dict[str, Any], status: int) -> Response:
        return JSONResponse(
            task,
            status_code=status,
            headers={
                "X-Meshlb-Task-Id": str(task["id"]),
                "X-Meshlb-Node": ctx.node_id,
                "Location": f"/v1/tasks/{task['id']}",
            },
        )

    async def get_task(request: Request) -> Response:
        task_id = task_id_of(request)
        wait_s = parse_wait(request.query_params.get("wait"))
        local_only = request.query_params.get("local") == "1"
        if local_only:
            ctx.auth.require(request)
        record = service.get(task_id)
        if record is not None and not record.final and not local_only:
            fresher = await ask_owner(task_id, wait_s)
            if fresher is not None:
                return JSONResponse(fresher)
        if record is not None and not record.final and wait_s:
            record = await service.wait_final(task_id, wait_s)
        if record is not None:
            return JSONResponse(record.to_public())
        if not local_only:
            remote = await find_on_peers(
                ctx.link.client, ctx.mesh.alive_peer_urls(), task_id, wait_s, ctx.link.cluster_key
            )
            if remote is not None:
                return JSONResponse(remote)
        raise not_found(task_id)

    async def ask_owner(task_id: str, wait_s: float) -> dict[str, Any] | None:
        """An unfinished copy held here may lag its owner (a lost update, or the task
        moved on): the owner's answer is authoritative when it gives one."""
        owner = service.owner_of(task_id)
        if owner is None or owner == ctx.node_id:
            return None
        addr = ctx.mesh.address_of(owner)
        if addr is None:
            return None
        answer = await ask_peers(
            ctx.link.client,
            [f"http://{addr}"],
            "GET",
            f"/v1/tasks/{task_id}",
            wait_s,
            ctx.link.cluster_key,
        )
        return None if answer is None else answer[1]

    async def delete_task(request: Request) -> Response:
        task_id = task_id_of(request)
        record = service.get(task_id)
        if record is not None and record.state in FINAL_STATES:
            raise ApiError(
                409, f"task '{task_id}' already finished ({record.state}); nothing to cancel"
            )
        if service.owns(task_id):
            record = await service.cancel(task_id)
            assert record is not None
            return JSONResponse(record.to_public())
        if request.query_params.get("local") == "1":
            ctx.auth.require(request)
            raise ApiError(404, f"task '{task_id}' is not owned by this node")
        # Only the owner can stop a task: ask every peer, the owner answers.
        answer = await ask_peers(
            ctx.link.client,
            ctx.mesh.alive_peer_urls(),
            "DELETE",
            f"/v1/tasks/{task_id}",
            0.0,
            ctx.link.cluster_key,
            frozenset({200, 409}),
        )
        if answer is not None:
            return JSONResponse(answer[1], status_code=answer[0])
        if record is not None:
            raise ApiError(
                503,
                f"the node that owns task '{task_id}' did not answer; try again",
                {"Retry-After": "2"},
            )
        raise not_found(task_id)

    async def list_tasks(request: Request) -> Response:
        """Mesh-wide by default (every live node's copies, one row per task, the most
        advanced copy wins); `scope=local` (or a peer's `local=1`) lists this node's."""
        state = request.query_params.get("state")
        if state is not None and state not in STATES:
            raise ApiError(422, f"query parameter state must be one of {', '.join(STATES)}")
        limit_raw = request.query_params.get("limit", "100")
        if not (limit_raw.isascii() and limit_raw.isdigit()) or not 1 <= int(limit_raw) <= 1000:
            raise ApiError(422, "query parameter limit must be an integer from 1 to 1000")
        limit = int(limit_raw)
        scope = request.query_params.get("scope", "mesh")
        if scope not in ("mesh", "local"):
            raise ApiError(422, "query parameter scope must be mesh or local")
        wanted_key = request.query_params.get("idempotency_key")
        if wanted_key is not None:  # the task made with this key, if any
            if scope == "local" or request.query_params.get("local") == "1":
                found = service.find_by_key(wanted_key)
                return JSONResponse({"tasks": [] if found is None else [found.to_public()]})
            task = await keys.find(wanted_key)
            return JSONResponse({"tasks": [] if task is None else [task]})
        fresh = [service.get(r.id) for r in service.store.recent(None, 100_000)]
        rows = [
            r.to_public() for r in fresh if r is not None and (state is None or r.state == state)
        ]
        if request.query_params.get("local") == "1":
            ctx.auth.require(request)
        if scope == "local" or request.query_params.get("local") == "1":
            return JSONResponse({"tasks": rows[:limit]})
        params = {"limit": str(limit), **({"state": state} if state else {})}
        answers = await gather_from_peers(
            ctx.link.client, ctx.mesh.alive_peer_urls(), "/v1/tasks", params, ctx.link.cluster_key
        )
        merged = merge_task_rows([rows, *(a.get("tasks", []) for a in answers)])
        return JSONResponse({"tasks": merged[:limit], "nodes_answered": 1 + len(answers)})

    return [
        Route("/v1/tasks", submit, methods=["POST"]),
        Route("/v1/tasks", list_tasks, methods=["GET"]),
        Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
        Route("/v1/tasks/{task_id}", delete_task, methods=["DELETE"]),
    ]
