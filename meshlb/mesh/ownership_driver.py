"""The Trio driver of the task-ownership core: feed it events, carry out its commands.

The core (`meshlb.mesh.ownership`) decides who owns, replicates, runs and records each
async task; this driver only moves bytes and time around it (DESIGN.md: receive ->
feed the core -> flush its outbox -> sleep until its next deadline):

- events come from the local executor (accepted, started, finished), from gossip
  (joined, suspected, died, left, restarted with a new boot id), from peers' batches
  (`receive`, whatever carried them: HTTP in a node, `MemoryNetwork` in the
  simulator), and from the clock;
- commands go to the `Executor` (run, unqueue, record a result) or to peers through
  the `Outbox` (the mailer, which batches them per peer over a request transport).

Its ports are all it knows of the node (`OwnershipPorts`): an executor, the
placement service (the mesh as stealing reads it; where a taken-over task runs), an
outbox, an event log and a clock. Every
call into the core is synchronous, so the core is never entered concurrently;
commands that send are fire-and-forget because the core re-sends until acked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from meshlb.drivers.wakeup import Wakeup, deadline_loop
from meshlb.events import EventLog
from meshlb.gossip.events import Event as GossipEvent
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.meta import decode_meta
from meshlb.mesh.ownership import Ownership
from meshlb.mesh.ownership_driver_counters import DriverCounters
from meshlb.mesh.ownership_wire import Batch
from meshlb.mesh.peer_events import PeerEvents
from meshlb.mesh.placement import Candidate
from meshlb.mesh.placement_service import Placement
from meshlb.mesh.replication import TaskCopy
from meshlb.mesh.stealing import Waiting
from meshlb.model_names import canonical_model
from meshlb.tasks.model import TaskRecord

log = structlog.get_logger()

# How often an idle node looks for work to steal; it also looks right after one of
# its runs ends (a slot just came free), so a fast node is not idle for up to this.
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


class MeshPlacement(Protocol):
    """The node's one placement service (`PlacementService`): this node and its alive
    peers as stealing reads them, and where a task this node owns without having been
    placed here (taken over, adopted, its model missing, leaving) should run."""

    def local_candidate(self) -> Candidate: ...
    def peer_candidates(self) -> list[Candidate]: ...
    def place(
        self, model: str, est_tokens: int, *, hops: int = 0, exclude: frozenset[str] = ...
    ) -> Placement: ...


class Outbox(Protocol):
    """Fire-and-forget delivery of one command to the node it names (the mailer)."""

    def send(self, cmd: m.Send) -> None: ...


@dataclass(frozen=True, slots=True)
class OwnershipConfig:
    node_id: str
    replication: int = 2
    dead_quorum_after_s: float | None = None
    # How often an idle node looks for work to steal (None: never; the simulator's
    # baselines run without stealing).
    idle_check_s: float | None = IDLE_CHECK_S
    # Run the core's validate() after every step (tests and the simulator).
    check_invariants: bool = False


@dataclass(frozen=True, slots=True)
class OwnershipPorts:
    """Everything the driver uses of the node, given once at construction."""

    executor: Executor
    placement: MeshPlacement
    outbox: Outbox
    events: EventLog
    clock: Callable[[], float] = trio.current_time
    # Sees every command the core emits (the simulator's exactly-once ledger).
    observe: Callable[[float, m.Command], None] | None = None


class OwnershipDriver:
    """Owns one `Ownership` core; not thread-safe, like everything on one Trio loop."""

    def __init__(self, config: OwnershipConfig, ports: OwnershipPorts) -> None:
        self.node_id = config.node_id
        self.config = config
        self.core = Ownership(
            config.node_id, None, config.replication,
            dead_quorum_after_s=config.dead_quorum_after_s,
            check_invariants=config.check_invariants,
        )  # fmt: skip
        self.ports = ports
        self.events = ports.events
        self.counters = DriverCounters()
        self.peers = PeerEvents(config.node_id, boot_from_meta)
        self._wakeup = Wakeup()
        self._settled: dict[str, trio.Event] = {}
        self._offer_reasons: dict[str, str] = {}  # task id -> why a peer offered it
        idle = config.idle_check_s
        self._next_idle = math.inf if idle is None else ports.clock() + idle

    # ---- feeding the core ----------------------------------------------------------

    def feed(self, event: m.Event) -> None:
        """Apply one event and carry out what the core answers."""
        now = self.ports.clock()
        self._apply(self.core.handle(event, now))
        if isinstance(event, m.TaskFinished) and self.config.idle_check_s is not None:
            self._next_idle = now  # a slot came free: look for work at once
        self._wakeup.nudge(self._next_deadline())  # it may be earlier now

    def accept(self, record: TaskRecord, forward_to: str | None) -> None:
        self.events.task_accepted(record.id, record.model, self.node_id, forward_to)
        self.feed(m.TaskAccepted(record, forward_to))

    def receive(self, batch: Batch) -> None:
        """A batch of messages from a peer (already authenticated and decoded)."""
        if (batch.sender, batch.boot) in self.peers.retired:
            self.counters.batches_from_a_past_life += 1
            log.info("batch from a restarted peer's old process dropped", peer=batch.sender)
            return
        for item in batch.items:
            if isinstance(item, m.HandOver):
                if len(self._offer_reasons) > MAX_OFFER_REASONS:  # aborted offers linger
                    self._offer_reasons.pop(next(iter(self._offer_reasons)))
                for c in item.copies:
                    self._offer_reasons[c.task_id] = item.reason
            if isinstance(item, m.StealAsk):
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
        for waiting in self.ports.executor.waiting():
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

    def _steal_requested(self, ask: m.StealAsk) -> m.StealRequested:
        local = self.ports.placement.local_candidate()
        return m.StealRequested(
            by=ask.sender,
            n=ask.n,
            models=ask.models,
            thief_tokens_per_s=ask.tokens_per_s,
            waiting=self.ports.executor.waiting(),
            local_tokens_per_s=local.tokens_per_s,
            local_slots=local.max_concurrency or 1,
        )

    # ---- carrying out commands -----------------------------------------------------

    def _apply(self, cmds: list[m.Command]) -> None:
        observe = self.ports.observe
        for cmd in cmds:
            if observe is not None:
                observe(self.ports.clock(), cmd)
            if isinstance(cmd, m.RunLocally):
                self._run_locally(cmd)
            elif isinstance(cmd, m.Unqueue):
                self.ports.executor.unqueue(cmd.task_id)
            elif isinstance(cmd, m.RecordFinal):
                self._record_final(cmd)
            elif isinstance(cmd, m.DropDuplicateResult):
                self.counters.duplicates_dropped += 1
                log.warning(
                    "duplicate result dropped",
                    task=cmd.task_id,
                    run=cmd.run_id,
                    kept_run=cmd.kept_run_id,
                )
            elif isinstance(cmd, m.Send):
                self._send(cmd)
        waiting = self._settled
        for task_id in [t for t in waiting if self.core.settled(t) or self.core.held_elsewhere(t)]:
            self._settled.pop(task_id).set()

    def _run_locally(self, cmd: m.RunLocally) -> None:
        if cmd.reason != "accepted":
            why = cmd.reason
            if why == "handed over":
                why = self._offer_reasons.pop(cmd.task_id, "forward")
            self.counters.received.add(why)
            log.info("task now owned here", task=cmd.task_id, reason=why)
            self.events.task_owned(cmd.task_id, cmd.record.model, why)
        model = canonical_model(cmd.record.model)
        missing = model not in self.ports.placement.local_candidate().models
        if cmd.reason in REPLACE_REASONS or missing:
            to = self.best_peer(model, cmd.record.est_tokens, here=not missing)
            if to is not None:
                log.info("taken-over task placed on a peer", task=cmd.task_id, peer=to)
                self.events.task_sent(cmd.task_id, model, to, cmd.reason)
                self.feed(m.PeerChosen(cmd.task_id, to))
                return
        self.ports.executor.run_owned(cmd.record, cmd.reason)

    def best_peer(self, model: str, est_tokens: int, *, here: bool) -> str | None:
        """The live peer placement prefers for a task of `model` (canonical), or None
        to keep it; `here=False` leaves this node out (it lacks the model, or leaves)."""
        exclude = frozenset() if here else frozenset({self.node_id})
        to = self.ports.placement.place(model, est_tokens, exclude=exclude).peer
        return to if to is not None and to in self.core.live else None

    def _record_final(self, cmd: m.RecordFinal) -> None:
        c = cmd.copy
        self.ports.executor.record_final(c.record, cmd.decided_here)
        if cmd.decided_here:
            self.counters.recorded.add(c.record.state)
            log.info(
                "task result recorded",
                task=c.task_id,
                state=c.record.state,
                node=c.record.node,
                replicas=list(c.replicas),
            )

    def _send(self, cmd: m.Send) -> None:
        msg = cmd.msg
        if isinstance(msg, m.HandOver):
            self.counters.handed_over.add(msg.reason, len(msg.copies))
            log.info(
                "offering tasks to a peer",
                peer=cmd.to,
                reason=msg.reason,
                tasks=[c.task_id for c in msg.copies],
                cause=msg.cause,
            )
        self.ports.outbox.send(cmd)

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
        await deadline_loop(self._wakeup, self._step)

    def tick(self) -> None:
        """Fire the core's timers that are due (the run loop calls it at each deadline)."""
        had_quorum = self.core.in_quorum()
        self._apply(self.core.tick(self.ports.clock()))
        self._note_quorum_change(had_quorum)

    async def _step(self, now: float) -> float:
        self.tick()
        if now >= self._next_idle:
            assert self.config.idle_check_s is not None
            self._next_idle = now + self.config.idle_check_s
            self.notice_idle()
        return self._next_deadline()

    def _next_deadline(self) -> float:
        due = self.core.next_deadline()
        return self._next_idle if due is None else min(due, self._next_idle)

    def notice_idle(self) -> None:
        """With free slots and nothing queued, ask the busiest suitable peer for work."""
        if self.ports.executor.waiting():
            return
        free = self.ports.executor.free_slots()
        peers = self.ports.placement.peer_candidates()
        if free <= 0 or not any(p.queued for p in peers):
            return
        self.feed(m.IdleNoticed(free, self.ports.placement.local_candidate(), tuple(peers)))

    def moves(self) -> tuple[int, int, int, int]:
        """(forwarded, stolen by here, taken over, duplicates dropped): the counters
        gossiped every second, without `stats`' walk over every task."""
        c, mine = self.core.counters, self.counters
        return (mine.handed_over.forward, mine.received.steal, c.taken_over, c.duplicates_dropped)

    def stats(self) -> dict[str, int]:
        """Counters for /v1/queue, /v1/cluster and /metrics."""
        c, mine = self.core.counters, self.counters
        return {
            "accepted": c.accepted,
            "succeeded": mine.recorded.succeeded,
            "failed": mine.recorded.failed,
            "cancelled": mine.recorded.cancelled,
            "forwarded": mine.handed_over.forward,
            "stolen_from_here": mine.handed_over.steal,
            "stolen_by_here": mine.received.steal,
            "received": c.received,
            "taken_over": c.taken_over,
            "taken_back": c.taken_back,
            "rereplicated": c.rereplicated,
            "duplicates_dropped": c.duplicates_dropped,
            "steal_requests": c.steal_requests,
            "owned": len(self.core.owned()),
            "copies": len(self.core.copies()),
        }
