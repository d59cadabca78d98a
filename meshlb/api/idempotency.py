"""Mesh-wide idempotency keys: the same key gives the same task, whichever node each
submission reaches, while nodes die and rejoin.

How: the key decides one member, its arbiter (rendezvous hashing over the alive
members, `meshlb.mesh.arbiter`); a node that is not the arbiter passes the submission
to it (one signed hop), so concurrent submissions with one key meet on one node,
where a per-key lock orders them. The arbiter answers from the task it holds with
that key, else asks every alive peer (`GET /v1/tasks?idempotency_key=K&local=1`,
answered from every copy: the key travels with the task's copies and survives
take-over), and makes the task only when nobody has it. If the arbiter cannot be
reached, the node decides itself the same way (after the fan-out). Cost per keyed
submission: one extra hop when this node is not the arbiter, plus one parallel
lookup of the alive peers when the key is new (`bench/idempotency.py` measures it).

What remains: two nodes that disagree about who is alive at the same instant can
pick two arbiters; each still asks the mesh first, so a duplicate needs both to
decide within the same few milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
import trio
from starlette.responses import Response

from meshlb.api.ports import NodeCounters, PeerLink, PeerTable
from meshlb.mesh.arbiter import arbiter_for
from meshlb.mesh.auth import AUTH_HEADER, sign
from meshlb.mesh.forward import HOPS_HEADER
from meshlb.mesh.lookup import gather_from_peers
from meshlb.tasks.model import TaskRecord
from meshlb.tasks.service import SETTLE_TIMEOUT_S

log = structlog.get_logger()
RELAYED_HEADERS = ("content-type", "x-meshlb-task-id", "x-meshlb-node", "location", "retry-after")
STATE_RANK = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "cancelled": 2}


def merge_task_rows(lists: list[list[Any]]) -> list[dict[str, Any]]:
    """One row per task id over every node's copies: the most advanced state wins (a
    replica's copy may lag its owner's), newest tasks first."""
    best: dict[str, dict[str, Any]] = {}
    for rows in lists:
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                continue
            held = best.get(row["id"])
            if held is None or STATE_RANK.get(row.get("state", ""), -1) > STATE_RANK.get(
                held.get("state", ""), -1
            ):
                best[row["id"]] = row
    return sorted(best.values(), key=lambda r: r.get("created_at") or 0, reverse=True)


class KeyArbiter:
    """The node's side of mesh-wide idempotency (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        mesh: PeerTable,
        link: PeerLink,
        counters: NodeCounters,
        find_here: Callable[[str], TaskRecord | None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self._mesh = mesh
        self._link = link
        self._counters = counters
        self._find_here = find_here  # the task service's copy made with a key, if any
        self._wall_clock = wall_clock
        self._inflight: dict[str, trio.Event] = {}

    def arbiter(self, key: str) -> str:
        alive = [p.node_id for p in self._mesh.peers() if p.state == "alive" and p.meta]
        return arbiter_for(key, [*alive, self.node_id]) or self.node_id

    async def pass_to_arbiter(
        self, key: str, raw_body: bytes, priority_header: str | None
    ) -> Response | None:
        """The arbiter's answer to this submission, or None to decide here (this node
        is the arbiter, or the arbiter did not answer usefully)."""
        arbiter = self.arbiter(key)
        if arbiter == self.node_id:
            return None
        addr = self._mesh.address_of(arbiter)
        if addr is None:
            return None
        headers = {"content-type": "application/json", HOPS_HEADER: "1"}
        if priority_header is not None:
            headers["x-meshlb-priority"] = priority_header
        key_ = self._link.cluster_key
        if key_ is not None:
            signed_at = self._wall_clock()
            headers[AUTH_HEADER] = sign(key_, "POST", "/v1/tasks", raw_body, signed_at, headers)
        try:
            r = await self._link.client.post(
                f"http://{addr}/v1/tasks",
                content=raw_body,
                headers=headers,
                timeout=SETTLE_TIMEOUT_S + 5.0,
            )
        except httpx.HTTPError as e:
            log.info("idempotency arbiter unreachable; deciding here", peer=arbiter, error=repr(e))
            return None
        if r.status_code >= 500:
            log.info(
                "idempotency arbiter refused; deciding here", peer=arbiter, status=r.status_code
            )
            return None
        self._counters.tasks_keyed_via_arbiter += 1
        kept = {k: r.headers[k] for k in RELAYED_HEADERS if k in r.headers}
        return Response(r.content, status_code=r.status_code, headers=kept)

    @asynccontextmanager
    async def deciding(self, key: str) -> AsyncIterator[None]:
        """One decision per key at a time on this node."""
        while key in self._inflight:
            await self._inflight[key].wait()
        self._inflight[key] = trio.Event()
        try:
            yield
        finally:
            self._inflight.pop(key).set()

    async def find(self, key: str) -> dict[str, Any] | None:
        """The task made with `key`, from this node's copies or any alive peer's."""
        record = self._find_here(key)
        if record is not None:
            return record.to_public()
        answers = await gather_from_peers(
            self._link.client,
            self._mesh.alive_peer_urls(),
            "/v1/tasks",
            {"idempotency_key": key},
            self._link.cluster_key,
        )
        rows = merge_task_rows([a.get("tasks", []) for a in answers])
        return rows[0] if rows else None
