"""What the HTTP routes take from the node, in small pieces.

The composition root (`meshlb.node_build`) builds every part once, in dependency
order, and hands each route module only what it reads: no route sees the whole node,
nothing is set after construction, and a test can assemble any one module over fakes.
This module holds the pieces several route modules share; a piece only one module
uses is declared beside it (`OllamaPorts`, `TaskPorts`, `RelayPorts`, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import httpx

from meshlb.mesh.view import Peer


class PeerTable(Protocol):
    """The mesh as the routes read it (`meshlb.mesh.node_view.MeshPeers`)."""

    def peers(self) -> list[Peer]:
        """Every member, this node first-class with its live numbers."""
        ...

    def alive_peer_urls(self) -> list[str]:
        """Base URLs of the alive peers (not this node), for fan-outs."""
        ...

    def address_of(self, node_id: str) -> str | None:
        """A member's HTTP address (`host:port`), None if unknown."""
        ...


@dataclass(frozen=True, slots=True)
class PeerLink:
    """Node-to-node HTTP: the pooled client and the key that signs every request."""

    client: httpx.AsyncClient
    cluster_key: str | None


@dataclass(frozen=True, slots=True)
class RequestRules:
    """The request settings the routes apply (from `NodeSettings`)."""

    max_body_bytes: int
    request_timeout_s: float | None
    default_num_predict: int


class Drain:
    """Set on SIGTERM: new work is refused with 503 while queued work finishes or moves.

    The one piece of node state the routes read that changes while the node runs."""

    __slots__ = ("_active",)

    def __init__(self) -> None:
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def start(self) -> None:
        self._active = True


@dataclass(slots=True)
class NodeCounters:
    """Request events of this node, one typed field each (`/v1/queue`'s
    `node_counters` and `meshlb_node_events_total{event}`)."""

    accepted: int = 0  # Ollama-API requests queued here
    forwarded: int = 0  # ... and sent to a peer instead
    completed: int = 0  # answered to the end from the local Ollama
    timed_out: int = 0
    client_disconnects: int = 0  # the client left before the answer ended
    backend_failures: int = 0  # the local Ollama failed mid-answer
    tasks_accepted: int = 0
    tasks_idempotent_hits: int = 0
    tasks_refused_unreplicated: int = 0
    tasks_keyed_via_arbiter: int = 0
    internal_refused: int = 0
    internal_malformed: int = 0
    peer_requests_refused: int = 0
    show_peer_errors: int = 0

    def nonzero(self) -> dict[str, int]:
        """The counters that moved, by name (what SPEC's JSON and the metric list)."""
        return {name: value for name, value in asdict(self).items() if value}
