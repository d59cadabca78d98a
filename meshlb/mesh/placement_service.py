"""Where a piece of work runs: the one placement service every path asks.

Ollama-API requests, `POST /v1/tasks`, a taken-over task, graceful leave and work
stealing all need the same answer from the same picture of the mesh, so they all ask
this one object instead of filtering "alive peers that have the model" their own way:

- the candidates: this node (always, whatever gossip says of it) and the alive peers
  with readable metadata; a suspect may be dead, and sending work there risks a hang;
- the work recently sent: gossiped load is up to an announce interval old, so each
  task sent to a peer since its last metadata update counts as queued there
  (`RecentlySent`), or a burst would herd onto the one peer that looked idle;
- exclusion: members the caller leaves out (a peer that failed to take the request,
  this node when it is full or leaving);
- the hop rule (one hop at most) and the local-first rule (here unless a peer is
  clearly sooner) are priced by `placement.place`, which this service calls; each
  answer says why (`Reason`), so a log line or the dashboard can.

It does no I/O and reads no clock: the mesh comes in through `MeshMembers` (the node's
gossip view, or a simulator's board), randomness through an `rng`. Opening the request
on the chosen peer stays with the caller, which reports back with `sent()` or places
again with the failed peer excluded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Protocol

from meshlb.mesh.affinity import ConversationMap, Served
from meshlb.mesh.candidates import RecentlySent
from meshlb.mesh.placement import (
    MAX_HOPS,
    Candidate,
    Decision,
    NoHost,
    RunHere,
    SendTo,
    TaskNeeds,
    place,
)
from meshlb.mesh.residency_placement import SentModels, served_on, task_needs, with_sent
from meshlb.model_names import canonical_model


class Reason(Enum):
    """Why work goes where it goes; the value is the phrase a log line shows."""

    SOONEST_HERE = "about as soon here as on the best peer"
    ONLY_HERE = "no live peer can run the model"
    LANDED = "forwarded already: runs where it landed"
    SOONER_THERE = "sooner there"
    NOT_HERE = "model not runnable here"
    NOWHERE = "no live member can run the model"
    NO_SECOND_HOP = "forwarded already and not runnable here: never a second hop"
    EXCLUDED = "every member that could run it failed or was left out"


@dataclass(frozen=True, slots=True)
class Placement:
    """A decision (`RunHere`, `SendTo`, `NoHost`) and why it was taken."""

    decision: Decision
    reason: Reason
    needs: TaskNeeds | None = None  # what was priced (the model's size among it)

    @property
    def peer(self) -> str | None:
        """The member to send the work to, or None (here, or nowhere)."""
        return self.decision.node_id if isinstance(self.decision, SendTo) else None


@dataclass(frozen=True, slots=True)
class MemberLoad:
    """One peer as gossip last showed it: its candidate, gossip state, incarnation."""

    candidate: Candidate
    state: str
    incarnation: int


class MeshMembers(Protocol):
    """The mesh as placement reads it."""

    def local_candidate(self) -> Candidate:
        """This node with its live numbers (not the gossiped ones, which lag)."""
        ...

    def peers(self) -> Sequence[MemberLoad]:
        """Every other member with readable metadata, whatever its state."""
        ...


# How a decision is taken among the usable candidates: `placement.place` in a node;
# the simulator injects the baselines it compares meshlb with (round-robin, ...).
Strategy = Callable[[TaskNeeds, Sequence[Candidate], random.Random], Decision]


class PlacementService:
    """Decides where work runs; remembers what it sent where (anti-herding)."""

    def __init__(
        self,
        node_id: str,
        members: MeshMembers,
        rng: random.Random,
        sent: RecentlySent | None = None,
        strategy: Strategy = place,
    ) -> None:
        self.node_id = node_id
        self._strategy = strategy
        self._members = members
        self._rng = rng
        self._sent = sent if sent is not None else RecentlySent()
        # Residency (issue 11): models sent to each peer since its last update count as
        # loaded there; conversation prefix -> the host that served it (affinity).
        self._sent_models = SentModels()
        self.conversations = ConversationMap()

    def local_candidate(self) -> Candidate:
        return self._members.local_candidate()

    def peer_candidates(self) -> list[Candidate]:
        """The alive peers (not this node), each with the work sent to it since its
        last metadata update counted as queued there."""
        out = []
        for member in self._members.peers():
            c = member.candidate
            if member.state != "alive" or c.node_id == self.node_id:
                continue
            extra = self._sent.pending(c.node_id, member.incarnation)
            models = self._sent_models.pending(c.node_id, member.incarnation)
            res = with_sent(c.residency, models)
            out.append(replace(c, queued=c.queued + extra, residency=res) if extra or models else c)
        return out

    def place(
        self,
        model: str,
        est_tokens: int,
        *,
        hops: int = 0,
        exclude: frozenset[str] = frozenset(),
        payload: Mapping[str, Any] | None = None,
        known_gb: float | None = None,
    ) -> Placement:
        """Where a task of `model` (any spelling) with `est_tokens` runs, and why.

        `hops`: how often it was forwarded already (one hop at most). `exclude`: members
        left out; put this node's id in it to place elsewhere only. `Reason.EXCLUDED`
        says that only a left-out member could have run it, so a caller can tell
        "they all failed" from "nobody has it"."""
        wanted = canonical_model(model)
        pool = [self.local_candidate(), *self.peer_candidates()]
        able = {c.node_id for c in pool if wanted in c.models}
        usable = [c for c in pool if c.node_id not in exclude and (c.is_local or c.node_id in able)]
        needs, turn = task_needs(
            TaskNeeds(wanted, est_tokens, hops), usable, payload, self.conversations, known_gb
        )
        decision = self._strategy(needs, usable, self._rng)
        if turn is not None and not isinstance(decision, NoHost):  # where this turn runs
            host = decision.node_id if isinstance(decision, SendTo) else self.node_id
            runs_on = served_on(next((c for c in usable if c.node_id == host), None), wanted)
            self.conversations.put(turn.key, runs_on or Served(host))
        reason = self._reason(decision, hops, able - exclude, able & exclude)
        return Placement(decision, reason, needs)

    def _reason(
        self, decision: Decision, hops: int, usable: set[str], left_out: set[str]
    ) -> Reason:
        if isinstance(decision, SendTo):
            return Reason.NOT_HERE if decision.local_eta_s is None else Reason.SOONER_THERE
        if isinstance(decision, RunHere):
            if hops >= MAX_HOPS:
                return Reason.LANDED
            return Reason.SOONEST_HERE if usable - {self.node_id} else Reason.ONLY_HERE
        if hops >= MAX_HOPS:
            return Reason.NO_SECOND_HOP
        return Reason.EXCLUDED if left_out else Reason.NOWHERE

    def sent(self, node_id: str, needs: TaskNeeds | None = None) -> Callable[[], None]:
        """One task went to `node_id`: count it there until its next metadata update
        (and, given what was priced, its model as loaded there). Call what this returns
        when its answer has ended, so a finished request does not look queued there
        until the peer's next update (a late update made a peer look 5 requests deep
        for seconds after they were all answered)."""
        incarnation = next(
            (m.incarnation for m in self._members.peers() if m.candidate.node_id == node_id), 0
        )
        self._sent.note(node_id, incarnation)
        if needs is not None:
            self._sent_models.note(node_id, incarnation, needs.model, needs.size_gb or 0.0)

        def finished() -> None:
            self._sent.done(node_id, incarnation)
            if needs is not None:
                self._sent_models.done(node_id, incarnation, needs.model)

        return finished
