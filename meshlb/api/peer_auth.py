"""Refuse a request that claims to come from a peer but cannot prove it (cluster key).

One check for every node-to-node entry point: forwarded inference (hop header),
`?local=1` lookups, forwarded task submissions, ownership batches. The MAC covers the
method, path and query, body and behaviour headers; each signature is accepted once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from meshlb.api.errors import ApiError
from meshlb.api.ports import NodeCounters
from meshlb.mesh.auth import AUTH_HEADER, ReplayGuard, verify


def signed_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


@dataclass(frozen=True, slots=True)
class PeerAuth:
    """The cluster key, the signatures seen lately (each is accepted once), and the
    counter of refusals."""

    cluster_key: str | None
    replay_guard: ReplayGuard
    counters: NodeCounters
    wall_clock: Callable[[], float] = time.time

    def require(self, request: Request, body: bytes = b"", what: str = "") -> None:
        """401 unless the request is signed with the cluster key (no-op without a key)."""
        if self.cluster_key is None:
            return
        problem = verify(
            self.cluster_key,
            request.headers.get(AUTH_HEADER),
            request.method,
            signed_path(request),
            body,
            self.wall_clock(),
            request.headers,
            self.replay_guard,
        )
        if problem is not None:
            self.counters.peer_requests_refused += 1
            raise ApiError(401, f"{what or 'request from a peer'} refused: {problem}")
