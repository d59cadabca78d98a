"""The Trio driver of the task-ownership core: feed it events, carry out its commands.

The core (`meshlb.mesh.ownership`) decides who owns, replicates, runs and records each
async task; this driver only moves bytes and time around it (DESIGN.md: receive ->
feed the core -> flush its outbox -> sleep until its next deadline):

- events come from the local task service (accepted, started, finished, run lost),
  from gossip (joined, suspected, died, left, restarted with a new boot id), from
  peers' HTTP batches (`meshlb.api.internal_routes`), and from the clock;
- commands go to the local task service (run, unqueue, record a result) or to peers
  through the mailer, which batches them per peer over HTTP.

Every call into the core is synchronous, so the core is never entered concurrently;
commands that send are fire-and-forget because the core re-sends until acked.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Protocol

import structlog
import trio

from meshlb.backend.catalog import canonical_model
from meshlb.events import EventLog
from meshlb.gossip.events import Event as GossipEvent
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.meta import decode_meta
from meshlb.mesh.ownership import Ownership
from meshlb.mesh.ownership_wire import Batch, NetworkCommand, StealAsk, is_network_command
from meshlb.mesh.peer_events import PeerEvents
from meshlb.mesh.placement import Candidate, SendTo, TaskNeeds, place
from meshlb.mesh.replication import TaskCopy
from meshlb.mesh.stealing import Waiting
from meshlb.tasks.model import TaskRecord

log = structlog.get_logger()

# How often an idle node looks for work to steal (also right after a run ends).
IDLE_CHECK_S = 1.0
# Reasons a task arrives here without this node having been chosen for it by
# placement: it goes through placement again (the heir may lack the model).
REPLACE_REASONS = frozenset({"taken over", "adopted"})
# Bound on remembered offer reasons (only for counting forwards vs steals).
MAX_OFFER_REASONS = 10_000


def boot_from_meta(meta: bytes) -> str | None:
    decoded = decode_meta(meta)
    return decoded.boot if decoded is not None and decoded.boot else None


class Executor(Protocol):
    """The local side: the task service over this node's scheduler and Ollama."""

    def run_owned(self, record: TaskRecord, reason: str) -> None: ...
    def unqueue(self, task_id: str) -> None: ...
    def record_final(self, record: TaskRecord, decided_here: bool) -> None: ...
    def waiting(self) -> tuple[Waiting, ...]: ...
    def free_slots(self) -> int: ...


class MeshView(Protocol):
    """What placement and stealing read: this node and its alive peers, as gossiped."""

    def local_candidate(self) -> Candidate: ...
    def peer_candidates(self) -> list[Candidate]: ...


class Sender(Protocol):
    def send(self, cmd: NetworkCommand) -> None: ...


class OwnershipDriver:
    """Owns one `Ownership` core; not thread-safe, like everything on one Trio loop."""

    def __init__(
        self,
        node_id: str,
        replication: int,
        executor: Executor,
        rng: random.Random | None = None,
        dead_quorum_after_s: float | None = None,
    ) -> None:
        self.node_id = node_id
        self.core = Ownership(node_id, None, replication, dead_quorum_after_s=dead_quorum_after_s)
        self.executor = executor
        self.rng = rng or random.Random()
        self.sender: Sender | None = None
        self.view: MeshView | None = None
        self.counters: Counter[str] = Counter()
        self.peers = PeerEvents(node_id, boot_from_meta)
        self._wake = trio.Event()
        self._settled: dict[str, trio.Event] = {}
        self._offer_reasons: dict[str, str] = {}  # task id -> why a peer offered it
        self.events = EventLog(node_id)  # for the dashboard (NodeContext.telemetry.log)

    # ---- feeding the core ----------------------------------------------------------

    def feed(self, event: m.Event) -> None:
        """Apply one event and carry out what the core answers."""
        self._apply(self.core.handle(event, trio.current_time()))
        self._wake.set()  # the core's next deadline may be earlier now

    def accept(self, record: TaskRecord, forward_to: str | None) -> None:
        self.events.task_accepted(record.id, record.model, self.node_id, forward_to)
        self.feed(m.TaskAccepted(record, forward_to))

    def receive(self, batch: Batch) -> None:
        """A batch of messages from a peer (already authenticated and decoded)."""
        if (batch.sender, batch.boot) in self.peers.retired:
            self.counters["batches_from_a_past_life"] += 1
            log.info("batch from a restarted peer's old process dropped", peer=batch.sender)
            return
        for item in batch.items:
            if isinstance(item, m.HandOverReceived):
                if len(self._offer_reasons) > MAX_OFFER_REASONS:  # aborted offers linger
                    self._offer_reasons.pop(next(iter(self._offer_reasons)))
                for c in item.copies:
                    self._offer_reasons[c.task_id] = item.reason
            if isinstance(item, StealAsk):
                self.feed(self._steal_requested(item))
            else:
                self.feed(item)

    def hand_over(self, task_id: str, to: str) -> None:
        """Offer a queued task this node owns to peer `to`."""
        self.feed(m.PeerChosen(task_id, to))

    def offer_queued_to_peers(self) -> int:
        """Graceful leave: offer every queued task to the best alive peer that has its
        model (an offer that fails comes back and runs here). Returns how many."""
        offered = 0
        for waiting in self.executor.waiting():
            to = self.best_peer(waiting.model, waiting.est_tokens, here=False)
            if to is not None:
                self.hand_over(waiting.task_id, to)
                offered += 1
        return offered

    def get(self, task_id: str) -> TaskCopy | None:
        return self.core.get(task_id)

    def copies(self) -> list[TaskCopy]:
        """Every task copy this node holds (as owner, replica or offerer)."""
        return self.core.copies()

    async def wait_settled(self, task_id: str, timeout_s: float) -> bool:
        """Wait (bounded) until a new task is held by two nodes: acked by its replicas,
        or handed over. True if a second node holds it (`Ownership.held_elsewhere`);
        the wait ends at once when there is no live replica to wait for."""
        with trio.move_on_after(timeout_s):
            while not self.core.held_elsewhere(task_id) and not self.core.settled(task_id):
                event = self._settled.setdefault(task_id, trio.Event())
                await event.wait()
        self._settled.pop(task_id, None)
        return self.core.held_elsewhere(task_id)

    def _steal_requested(self, ask: StealAsk) -> m.StealRequested:
        local = self.view.local_candidate() if self.view is not None else None
        return m.StealRequested(
            by=ask.by,
            n=ask.n,
            models=ask.models,
            thief_tokens_per_s=ask.tokens_per_s,
            waiting=self.executor.waiting(),
            local_tokens_per_s=local.tokens_per_s if local is not None else 0.0,
            local_slots=(local.max_concurrency or 1) if local is not None else 1,
        )

    # ---- carrying out commands -----------------------------------------------------

    def _apply(self, cmds: list[m.Command]) -> None:
        for cmd in cmds:
            if isinstance(cmd, m.RunLocally):
                self._run_locally(cmd)
            elif isinstance(cmd, m.Unqueue):
                self.executor.unqueue(cmd.task_id)
            elif isinstance(cmd, m.RecordFinal):
                self._record_final(cmd)
            elif isinstance(cmd, m.DropDuplicateResult):
                self.counters["duplicates_dropped"] += 1
                log.warning(
                    "duplicate result dropped",
                    task=cmd.task_id,
                    run=cmd.run_id,
                    kept_run=cmd.kept_run_id,
                )
            elif is_network_command(cmd):
                self._send(cmd)
        waiting = self._settled
        for task_id in [t for t in waiting if self.core.settled(t) or self.core.held_elsewhere(t)]:
            self._settled.pop(task_id).set()

    def _run_locally(self, cmd: m.RunLocally) -> None:
        if cmd.reason != "accepted":
            why = cmd.reason
            if why == "handed over":
                why = self._offer_reasons.pop(cmd.task_id, "forward")
            self.counters[f"received_{why.replace(' ', '_')}"] += 1
            log.info("task now owned here", task=cmd.task_id, reason=why)
            self.events.task_owned(cmd.task_id, cmd.record.model, why)
        local_models = self.view.local_candidate().models if self.view is not None else None
        model = canonical_model(cmd.record.model)
        missing = local_models is not None and model not in local_models
        if cmd.reason in REPLACE_REASONS or missing:
            to = self.best_peer(model, cmd.record.est_tokens, here=not missing)
            if to is not None:
                log.info("taken-over task placed on a peer", task=cmd.task_id, peer=to)
                self.events.task_sent(cmd.task_id, model, to, cmd.reason)
                self.feed(m.PeerChosen(cmd.task_id, to))
                return
        self.executor.run_owned(cmd.record, cmd.reason)

    def best_peer(self, model: str, est_tokens: int, *, here: bool) -> str | None:
        """The live peer placement prefers for a task of `model` (canonical), or None
        to keep it; `here=False` leaves this node out (it lacks the model, or leaves)."""
        if self.view is None:
            return None
        peers = [c for c in self.view.peer_candidates() if model in c.models]
        usable = [self.view.local_candidate(), *peers] if here else peers
        decision = place(TaskNeeds(model, est_tokens), usable, self.rng)
        if isinstance(decision, SendTo) and decision.node_id in self.core.live:
            return decision.node_id
        return None

    def _record_final(self, cmd: m.RecordFinal) -> None:
        c = cmd.copy
        self.executor.record_final(c.record, cmd.decided_here)
        if cmd.decided_here:
            self.counters[f"recorded_{c.record.state}"] += 1
            log.info(
                "task result recorded",
                task=c.task_id,
                state=c.record.state,
                node=c.record.node,
                replicas=list(c.replicas),
            )

    def _send(self, cmd: NetworkCommand) -> None:
        if isinstance(cmd, m.HandOver):
            self.counters[f"handed_over_{cmd.reason}"] += len(cmd.copies)
            log.info(
                "offering tasks to a peer",
                peer=cmd.to,
                reason=cmd.reason,
                tasks=[c.task_id for c in cmd.copies],
            )
        if self.sender is not None:
            self.sender.send(cmd)

    # ---- gossip --------------------------------------------------------------------

    async def follow_gossip(self, events: trio.MemoryReceiveChannel[GossipEvent]) -> None:
        """Translate membership changes into the core's peer events, forever."""
        async for ev in events:
            self.on_gossip(ev)

    def on_gossip(self, ev: GossipEvent) -> None:
        had_quorum = self.core.in_quorum()
        self.events.gossip(ev)
        self._peer_event(ev)
        self._note_quorum_change(had_quorum)

    def _note_quorum_change(self, had_quorum: bool) -> None:
        if had_quorum != self.core.in_quorum():
            core = self.core
            healthy = len((core.live - core.suspected) & core.known)
            if had_quorum:
                log.warning(
                    "quorum lost: no take-overs or results until a majority is back "
                    "(or the dead are reaped from gossip)",
                    healthy=healthy,
                    known=len(core.known),
                )
            else:
                log.info("quorum regained", healthy=healthy, known=len(core.known))
            self.events.quorum(not had_quorum, healthy, len(core.known))

    def _peer_event(self, ev: GossipEvent) -> None:
        for event in self.peers.translate(ev, self.core.live):
            if isinstance(event, m.PeerDown):
                log.info("peer gone: taking over its tasks", peer=event.node_id, left=event.left)
            elif isinstance(event, m.PeerRestarted):
                log.info("peer restarted: its old tasks are orphans", peer=event.node_id)
            self.events.peer_event(event)
            self.feed(event)

    # ---- time ----------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: fire the core's timers, and look for work to steal when idle."""
        next_idle = trio.current_time() + IDLE_CHECK_S
        while True:
            due = self.core.next_deadline()
            wake_at = min(next_idle, math.inf if due is None else due)
            with trio.move_on_at(wake_at):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            had_quorum = self.core.in_quorum()
            self._apply(self.core.tick(now))
            self._note_quorum_change(had_quorum)
            if now >= next_idle:
                next_idle = now + IDLE_CHECK_S
                self.notice_idle()

    def notice_idle(self) -> None:
        """With free slots and nothing queued, ask the busiest suitable peer for work."""
        if self.view is None or self.executor.waiting():
            return
        free = self.executor.free_slots()
        peers = self.view.peer_candidates()
        if free <= 0 or not any(p.queued for p in peers):
            return
        self.feed(m.IdleNoticed(free, self.view.local_candidate(), tuple(peers)))

    def moves(self) -> tuple[int, int, int, int]:
        """(forwarded, stolen by here, taken over, duplicates dropped): the counters
        gossiped every second, without `stats`' walk over every task."""
        c = self.core.counters
        return (
            self.counters["handed_over_forward"],
            self.counters["received_steal"],
            c.taken_over,
            c.duplicates_dropped,
        )

    def stats(self) -> dict[str, Any]:
        """Counters for /v1/queue, /v1/cluster and /metrics."""
        c = self.core.counters
        return {
            "accepted": c.accepted,
            "succeeded": self.counters["recorded_succeeded"],
            "failed": self.counters["recorded_failed"],
            "cancelled": self.counters["recorded_cancelled"],
            "forwarded": self.counters["handed_over_forward"],
            "stolen_from_here": self.counters["handed_over_steal"],
            "stolen_by_here": self.counters["received_steal"],
            "received": c.received,
            "taken_over": c.taken_over,
            "taken_back": c.taken_back,
            "rereplicated": c.rereplicated,
            "duplicates_dropped": c.duplicates_dropped,
            "steal_requests": c.steal_requests,
            "owned": len(self.core.owned()),
            "copies": len(self.core.copies()),
        }
