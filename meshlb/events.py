"""A node's recent history of decisions and mesh events, for the dashboard and `/metrics`.

`EventLog`: typed ring buffers of what happened and why — placement decisions with
their reason ("sent to gpu2: 1.2 s expected there vs 4.0 s here"), membership
changes (suspect, dead, alive, rejoined, left), take-overs, quorum lost/regained —
each with a wall-clock time. Two rings, so a burst of placements never pushes the
one "gpu3 dead" out of sight. (Request histograms and the sampled series are
`meshlb.telemetry`'s.)

Producers call one method each (the Ollama-API placement, the ownership driver);
`meshlb.api.dashboard` serves the JSON, `meshlb.api.metrics` exports the counts.
Times: `at` is wall-clock seconds (`time.time`, comparable across hosts to the
precision of their clocks).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from meshlb.gossip.events import (
    Event as GossipEvent,
)
from meshlb.gossip.events import (
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberRefuted,
    MemberSuspected,
)
from meshlb.mesh.ownership_msgs import PeerRestarted

MAX_PLACEMENTS = 300
MAX_MESH_EVENTS = 500
# Take-overs closer together than this are one "took over N tasks of X" event.
TAKE_OVER_BATCH_S = 10.0
GONE_KINDS = frozenset({"dead", "left", "restarted"})

Decision = Literal["local", "forwarded", "stolen", "taken_over", "handed_over"]
MeshKind = Literal[
    "alive",
    "rejoined",
    "suspect",
    "refuted",
    "dead",
    "left",
    "restarted",
    "took_over",
    "quorum_lost",
    "quorum_regained",
]
# The placement decisions `meshlb_placements_total{decision}` always exports.
PLACEMENT_DECISIONS: tuple[Decision, ...] = ("local", "forwarded", "stolen", "taken_over")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one request or task went, and why (`node`: where it runs)."""

    seq: int
    at: float
    decision: Decision
    model: str
    node: str
    reason: str
    task: str | None = None

    def to_public(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "type": "placement",
            "decision": self.decision,
            "model": self.model,
            "node": self.node,
            "reason": self.reason,
            "task": self.task,
        }


@dataclass(frozen=True, slots=True)
class MeshEvent:
    """A membership or failover change as this node saw it (`node`: whom it is about)."""

    seq: int
    at: float
    kind: MeshKind
    node: str
    text: str

    def to_public(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "type": "mesh",
            "kind": self.kind,
            "node": self.node,
            "text": self.text,
        }


def _s(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.1f} s"


class EventLog:
    """Two bounded rings (placements, mesh events) and a counter per decision."""

    def __init__(self, node_id: str = "", clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.clock = clock
        self.placements: deque[Placement] = deque(maxlen=MAX_PLACEMENTS)
        self.mesh: deque[MeshEvent] = deque(maxlen=MAX_MESH_EVENTS)
        self.decisions: Counter[str] = Counter(dict.fromkeys(PLACEMENT_DECISIONS, 0))
        self._seq = 0
        self._seen: set[str] = set()  # members ever seen alive (joined vs rejoined)
        self._took_over_count = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def place(
        self, decision: Decision, model: str, node: str, reason: str, task: str | None = None
    ) -> None:
        self.decisions[decision] += 1
        self.placements.append(
            Placement(self._next(), self.clock(), decision, model, node, reason, task)
        )

    def note(self, kind: MeshKind, node: str, text: str) -> None:
        self.mesh.append(MeshEvent(self._next(), self.clock(), kind, node, text))

    # ---- producers: one call at each site --------------------------------------

    def forwarded(self, peer: str, model: str, eta_s: float, local_eta_s: float | None) -> None:
        """An Ollama-API request sent to `peer` by placement (ollama_routes)."""
        if local_eta_s is None:
            reason = f"sent to {peer}: model not runnable here ({_s(eta_s)} expected there)"
        else:
            reason = f"sent to {peer}: {_s(eta_s)} expected there vs {_s(local_eta_s)} here"
        self.place("forwarded", model, peer, reason)

    def kept(self, here: str, model: str, eta_s: float | None, hops: int) -> None:
        """An Ollama-API request placement decided to run here (node `here`)."""
        if hops:
            reason = f"forwarded here by a peer: runs here ({_s(eta_s)} expected), no 2nd hop"
        else:
            reason = f"runs here: {_s(eta_s)} expected, no peer clearly sooner"
        self.place("local", model, here, reason)

    def task_accepted(self, task: str, model: str, here: str, forward_to: str | None) -> None:
        """A new async task placed by expected completion time (POST /v1/tasks)."""
        if forward_to is None:
            self.place("local", model, here, "task queued here: no peer expected sooner", task)
        else:
            self.place(
                "forwarded", model, forward_to, f"task sent to {forward_to}: sooner there", task
            )

    def task_owned(self, task: str, model: str, why: str) -> None:
        """An async task became this node's to run (ownership driver, `why` as logged)."""
        decision: Decision = {"steal": "stolen", "taken over": "taken_over"}.get(why, "handed_over")  # type: ignore[assignment]
        text = {
            "steal": "stolen from a busy peer",
            "taken over": "taken over from a dead or departed peer",
            "adopted": "adopted (an orphan of a restarted peer)",
            "forward": "handed over by the node that accepted it",
            "leave": "handed over by a peer that is leaving",
        }.get(why, why)
        self.place(decision, model, self.node_id, f"task runs here: {text}", task)
        if why == "taken over":
            self._took_over_one()

    def task_sent(self, task: str, model: str, peer: str, why: str) -> None:
        """An async task this node holds placed on a peer (a take-over placed again)."""
        self.place("forwarded", model, peer, f"task sent to {peer}: {why}", task)
        if why == "taken over":
            self._took_over_one()

    def _took_over_one(self) -> None:
        """Count one task taken over into "took over N tasks of X": take-overs come one
        task at a time (each behind its fence), so consecutive ones within
        `TAKE_OVER_BATCH_S` are one event. X is the member this node last saw die,
        leave or restart (the core does not say whose copy it was)."""
        gone = next((e.node for e in reversed(self.mesh) if e.kind in GONE_KINDS), "a peer")
        last = self.mesh[-1] if self.mesh else None
        n = 1
        if (
            last is not None
            and last.kind == "took_over"
            and last.node == gone
            and self.clock() - last.at < TAKE_OVER_BATCH_S
        ):
            n = self._took_over_count + 1
            self.mesh.pop()
        self._took_over_count = n
        tasks = "task" if n == 1 else "tasks"
        self.note("took_over", gone, f"took over {n} {tasks} of {gone}")

    def gossip(self, ev: GossipEvent) -> None:
        """A membership event (ownership driver's `on_gossip`)."""
        node = getattr(ev, "node", "")
        if not node or node == self.node_id:
            return
        if isinstance(ev, MemberJoined):
            again = node in self._seen
            self._seen.add(node)
            kind: MeshKind = "rejoined" if again else "alive"
            self.note(kind, node, f"{node} {'rejoined' if again else 'joined'} the mesh")
        elif isinstance(ev, MemberSuspected):
            self.note("suspect", node, f"{node} suspected (by {ev.by})")
        elif isinstance(ev, MemberRefuted):
            self.note("refuted", node, f"{node} refuted the suspicion: alive")
        elif isinstance(ev, MemberDied):
            self.note("dead", node, f"{node} declared dead (by {ev.by})")
        elif isinstance(ev, MemberLeft):
            self.note("left", node, f"{node} left the mesh")

    def peer_event(self, event: object) -> None:
        """A peer event the ownership core is fed: a restart is worth showing (the
        other kinds are the gossip events already noted)."""
        if isinstance(event, PeerRestarted):
            node = event.node_id
            self.note("restarted", node, f"{node} restarted: its old tasks are orphans")

    def quorum(self, regained: bool, healthy: int, known: int) -> None:
        if regained:
            self.note("quorum_regained", self.node_id, f"quorum regained ({healthy}/{known})")
        else:
            self.note(
                "quorum_lost",
                self.node_id,
                f"quorum lost ({healthy}/{known} healthy): no take-overs until a majority",
            )

    def recent(self, limit: int = 100) -> dict[str, list[dict[str, Any]]]:
        """Newest first, at most `limit` of each ring."""
        return {
            "placements": [e.to_public() for e in _newest(self.placements, limit)],
            "mesh": [e.to_public() for e in _newest(self.mesh, limit)],
        }


def _newest(ring: deque[Any], limit: int) -> Iterator[Any]:
    for i, item in enumerate(reversed(ring)):
        if i >= limit:
            return
        yield item
