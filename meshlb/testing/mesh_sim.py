"""Whole-mesh discrete-event simulator: gossip + scheduler + placement + ownership.

Each node = a `Membership` core (run by `GossipSim`), a `Scheduler`, an `Ownership`
core and a simulated backend (`slots` parallel generations at `tokens_per_s` each).
One heap of (time, seq, kind, ...) events, one `MemoryNetwork` (gossip datagrams and
node-to-node stream messages share its partitions and crashes), a virtual clock and
one seed: the same inputs always give the same run.

Modelling choices (why): load reaches peers through a board refreshed every
`announce_s` (the gossiped metadata of the real node; stale by up to that much);
node-to-node messages are dropped when the network says unreachable (the HTTP
driver's retries are not modelled: the protocol must survive loss); a restart is
seen by peers through a new boot id in the gossip metadata (PeerDown + PeerUp),
so a node that restarts faster than dead-detection does not strand its tasks.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshlb.gossip.config import GossipConfig
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership import Ownership
from meshlb.mesh.peer_events import PeerEvents
from meshlb.mesh.placement import Candidate, NoHost, SendTo, TaskNeeds, place
from meshlb.mesh.stealing import Waiting
from meshlb.sched.limits import Limits
from meshlb.sched.scheduler import Scheduler
from meshlb.tasks.model import TaskRecord
from meshlb.testing.gossip_sim import GossipSim
from meshlb.testing.memnet import LinkModel
from meshlb.testing.mesh_check import Ledger, SimTask

POLICIES = ("meshlb", "local", "round_robin", "random", "least_conn")
_ARRIVE, _MSG, _DONE, _WAKE, _TICK, _CALL = range(6)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    tokens_per_s: float
    slots: int
    models: frozenset[str]


@dataclass(slots=True)
class SimMeshNode:
    idx: int
    node_id: str
    spec: NodeSpec
    sched: Scheduler | None = None
    core: Ownership | None = None
    boot: int = 0
    runs: dict[str, int] = field(default_factory=dict)  # task id -> run generation
    peers: PeerEvents | None = None  # gossip -> peer events, with the boot ids seen here
    wake_at: float = float("inf")


class MeshSim:
    """N meshlb nodes in virtual time. `policy` picks placement: meshlb (placement),
    local (run where accepted), or a baseline (round_robin / random / least_conn);
    `steal` defaults to on for meshlb and local, off for the baselines."""

    def __init__(
        self,
        specs: Sequence[NodeSpec],
        *,
        seed: int = 0,
        policy: str = "meshlb",
        replication: int = 2,
        gossip: GossipConfig | None = None,
        link: LinkModel | None = None,
        announce_s: float = 1.0,
        tick_s: float = 0.1,
        steal: bool | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.policy, self.replication = policy, replication
        self.steal = steal if steal is not None else policy in ("meshlb", "local")
        self.announce_s, self.tick_s = announce_s, tick_s
        self.rng = random.Random(seed * 31 + 7)
        self.nodes = [SimMeshNode(i, f"node-{i:04d}", s) for i, s in enumerate(specs)]
        self.gossip = GossipSim(
            len(specs), seed=seed, config=gossip, link=link, meta_for=self._meta_for
        )
        self.net = self.gossip.net
        self.ledger = Ledger()
        self.now = 0.0
        self.board: dict[str, Candidate] = {}
        self.crashes: list[tuple[float, str, frozenset[str]]] = []
        self.last_arrival_at = 0.0
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._log_seen = 0
        self._rr = itertools.count()
        for nd in self.nodes:
            self._boot(nd, {n.node_id for n in self.nodes})
        for nd in self.nodes:
            assert nd.peers is not None
            nd.peers.boots = {n.node_id: self._meta_for(n.idx).decode() for n in self.nodes}
        self._announce()
        self._push(tick_s, _TICK, None)

    # ------------------------------------------------------------------ setup

    def _meta_for(self, idx: int) -> bytes:
        return f"boot-{self.nodes[idx].boot}".encode()

    def _boot(self, nd: SimMeshNode, live: set[str]) -> None:
        nd.sched = Scheduler(Limits(max_concurrency=nd.spec.slots, max_queue=100_000))
        nd.core = Ownership(nd.node_id, live, self.replication)
        nd.runs.clear()
        nd.peers = PeerEvents(nd.node_id, bytes.decode)
        nd.wake_at = float("inf")

    def _push(self, t: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def submit(self, tasks: Iterable[SimTask]) -> None:
        for task in tasks:
            self._push(task.arrive_at, _ARRIVE, task)
            self.last_arrival_at = max(self.last_arrival_at, task.arrive_at)

    def drain(self, limit_s: float = 600.0, step_s: float = 5.0) -> None:
        """Run past the last arrival, then until every accepted task has a recorded
        result (or `limit_s` more), then a little longer so replication settles."""
        self.run_until(max(self.now, self.last_arrival_at))
        end = self.now + limit_s
        ledger = self.ledger
        while self.now < end and len(ledger.final_at) < len(ledger.accepted):
            self.run_for(step_s)
        self.run_for(step_s)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run `fn` at virtual time t (fault injection)."""
        self._push(t, _CALL, fn)

    # ------------------------------------------------------------------ faults

    def crash(self, idx: int) -> None:
        nd = self.nodes[idx]
        if nd.core is None:
            return
        self.crashes.append((self.now, nd.node_id, frozenset(c.task_id for c in nd.core.owned())))
        self.gossip.crash(idx)
        nd.core = nd.sched = None
        nd.runs.clear()
        self.board.pop(nd.node_id, None)

    def restart(self, idx: int) -> None:
        nd = self.nodes[idx]
        nd.boot += 1
        self._boot(nd, {nd.node_id})
        self.gossip.restart(idx)

    def partition(self, *groups: Sequence[int]) -> None:
        self.net.partition(*[[self.gossip.nodes[i].addr for i in g] for g in groups])

    def heal(self) -> None:
        self.net.heal()

    def live_indices(self) -> list[int]:
        return [nd.idx for nd in self.nodes if nd.core is not None]

    # ------------------------------------------------------------------ loop

    def run_until(self, t_end: float) -> None:
        while self._heap and self._heap[0][0] <= t_end:
            t, _, kind, payload = heapq.heappop(self._heap)
            self.gossip.run_until(t)
            self.now = t
            self._gossip_events()
            self._dispatch(kind, payload)
        self.gossip.run_until(t_end)
        self.now = max(self.now, t_end)
        self._gossip_events()

    def run_for(self, duration_s: float) -> None:
        self.run_until(self.now + duration_s)

    def _dispatch(self, kind: int, payload: Any) -> None:
        if kind == _ARRIVE:
            assert isinstance(payload, SimTask)
            self._arrive(payload)
        elif kind == _MSG:
            dst, boot, sender, msg = payload
            nd = self.nodes[dst]
            if nd.core is not None and nd.boot == boot:
                self._feed(nd, self._complete(nd, sender, msg))
        elif kind == _DONE:
            self._done(*payload)
        elif kind == _WAKE:
            self._wake(self.nodes[payload])
        elif kind == _TICK:
            self._tick()
        else:
            payload()

    def _tick(self) -> None:
        step = round(self.now / self.tick_s)
        if step % max(1, round(self.announce_s / self.tick_s)) == 0:
            self._announce()
            if self.steal:
                for nd in self.nodes:
                    self._maybe_idle(nd)
        self._push(self.now + self.tick_s, _TICK, None)

    def _gossip_events(self) -> None:
        log = self.gossip.log
        for _, idx, ev in log[self._log_seen :]:
            nd = self.nodes[idx]
            if nd.core is None or nd.peers is None:
                continue
            for event in nd.peers.translate(ev, nd.core.live):
                self._feed(nd, event)
        self._log_seen = len(log)

    # ------------------------------------------------------------------ node actions

    def _feed(self, nd: SimMeshNode, ev: m.Event) -> None:
        assert nd.core is not None
        self._apply(nd, nd.core.handle(ev, self.now))

    def _apply(self, nd: SimMeshNode, cmds: list[m.Command]) -> None:
        sched = nd.sched
        assert sched is not None
        for cmd in cmds:
            self.ledger.on_command(self.now, nd.node_id, cmd)
            if isinstance(cmd, m.RunLocally):
                to = self._replace_target(nd, cmd)
                if to is not None:
                    self._feed(nd, m.PeerChosen(cmd.task_id, to))
                else:
                    sched.submit(cmd.task_id, cmd.record.priority, cmd.record.est_tokens, self.now)
            elif isinstance(cmd, m.Unqueue):
                sched.take(cmd.task_id)
            elif isinstance(cmd, m.SendStealRequest):
                self._send(nd, cmd.to, cmd)
            elif (routed := m.as_event(cmd, nd.node_id)) is not None:
                self._send(nd, routed[0], routed[1])
        self._poll(nd)

    def _send(self, nd: SimMeshNode, to: str, msg: object) -> None:
        dst = self.nodes[int(to.rsplit("-", 1)[1])]
        src_addr, dst_addr = self.gossip.nodes[nd.idx].addr, self.gossip.nodes[dst.idx].addr
        at = self.net.route_stream(src_addr, dst_addr, self.now)
        if at is not None and dst.core is not None:
            self._push(at, _MSG, (dst.idx, dst.boot, nd.node_id, msg))

    def _complete(self, nd: SimMeshNode, sender: str, msg: object) -> m.Event:
        """A steal request becomes an event with the victim's own queue and profile."""
        if not isinstance(msg, m.SendStealRequest):
            return msg  # type: ignore[return-value]
        assert nd.sched is not None and nd.core is not None
        waiting = []
        for q in nd.sched.queued_tasks():
            c = nd.core.get(q.task_id)
            if c is not None:
                waiting.append(Waiting(q.task_id, c.record.model, c.record.est_tokens))
        return m.StealRequested(
            sender, msg.n, msg.models, msg.tokens_per_s, tuple(waiting),
            nd.spec.tokens_per_s, nd.spec.slots,
        )  # fmt: skip

    def _poll(self, nd: SimMeshNode) -> None:
        sched, core = nd.sched, nd.core
        assert sched is not None and core is not None
        for start in sched.poll(self.now):
            copy = core.get(start.task_id)
            tokens = copy.record.est_tokens if copy is not None else 1
            nd.runs[start.task_id] = gen = nd.runs.get(start.task_id, 0) + 1
            self.ledger.starts[start.task_id] += 1
            self._push(self.now + max(1, tokens) / nd.spec.tokens_per_s, _DONE,
                       (nd.idx, nd.boot, start.task_id, gen))  # fmt: skip
            self._apply(nd, core.handle(m.TaskStarted(start.task_id, self.now), self.now))
        self._schedule_wake(nd)

    def _schedule_wake(self, nd: SimMeshNode) -> None:
        assert nd.core is not None and nd.sched is not None
        dues = [d for d in (nd.core.next_deadline(), nd.sched.next_deadline()) if d is not None]
        if dues and min(dues) < nd.wake_at:
            nd.wake_at = max(min(dues), self.now)
            self._push(nd.wake_at, _WAKE, nd.idx)

    def _wake(self, nd: SimMeshNode) -> None:
        if nd.core is None or nd.wake_at > self.now:
            return
        nd.wake_at = float("inf")
        self._apply(nd, nd.core.tick(self.now))

    def _done(self, idx: int, boot: int, task_id: str, gen: int) -> None:
        nd = self.nodes[idx]
        if nd.core is None or nd.sched is None or nd.boot != boot or nd.runs.get(task_id) != gen:
            return
        del nd.runs[task_id]
        nd.sched.finish(task_id, None, self.now)
        self.ledger.completions[task_id] += 1
        result = {"node": nd.node_id, "gen": gen}
        self._feed(nd, m.TaskFinished(task_id, "succeeded", self.now, result=result))
        if self.steal:
            self._maybe_idle(nd)

    # ------------------------------------------------------------------ load and placement

    def candidate(self, nd: SimMeshNode, *, is_local: bool = False) -> Candidate:
        assert nd.sched is not None
        return Candidate(
            nd.node_id, nd.spec.models, nd.sched.queued, nd.sched.running, nd.spec.slots,
            nd.spec.tokens_per_s, is_local=is_local,
        )  # fmt: skip

    def _announce(self) -> None:
        """Every node publishes its load (what gossip metadata carries in a real node)."""
        for nd in self.nodes:
            if nd.sched is not None:
                self.board[nd.node_id] = self.candidate(nd)

    def _view(self, nd: SimMeshNode) -> list[Candidate]:
        """This node's picture of the mesh: itself fresh, live peers from the board."""
        assert nd.core is not None
        live = nd.core.live
        peers = [c for n, c in self.board.items() if n in live and n != nd.node_id]
        return [self.candidate(nd, is_local=True), *peers]

    def _maybe_idle(self, nd: SimMeshNode) -> None:
        if nd.sched is None or nd.core is None or nd.sched.queued or nd.runs:
            return
        free = nd.spec.slots - nd.sched.running
        view = self._view(nd)
        self._feed(nd, m.IdleNoticed(free, view[0], tuple(view[1:])))

    def _arrive(self, task: SimTask) -> None:
        """The client sends to a random node; if that node is down it tries another."""
        live = self.live_indices()
        if not live:
            self.ledger.rejected += 1
            return
        entry = task.entry if task.entry in live else self.rng.choice(live)
        nd = self.nodes[entry]
        decision = self._place(nd, task)
        if decision is None:
            self.ledger.rejected += 1
            return
        record = TaskRecord(task.task_id, "generate", task.model, {}, task.priority,
                            nd.node_id, self.now, est_tokens=task.tokens)  # fmt: skip
        self.ledger.accept(self.now, task)
        to = None if decision == nd.node_id else decision
        self._feed(nd, m.TaskAccepted(record, forward_to=to))

    def _replace_target(self, nd: SimMeshNode, cmd: m.RunLocally) -> str | None:
        """A task this node now owns by take-over goes through placement again (the
        heir may lack the model or be slower); accepted, handed over or taken back
        (an offer just failed: do not offer again at once) it stays."""
        rec = cmd.record
        if rec.model in nd.spec.models and cmd.reason not in ("taken over", "adopted"):
            return None
        task = SimTask(rec.id, self.now, rec.model, rec.est_tokens, rec.priority)
        to = self._place(nd, task)
        return None if to == nd.node_id else to

    def _place(self, nd: SimMeshNode, task: SimTask) -> str | None:
        view = [c for c in self._view(nd) if task.model in c.models]
        if not view:
            return None
        if self.policy == "local":
            return nd.node_id if task.model in nd.spec.models else view[0].node_id
        if self.policy == "meshlb":
            d = place(TaskNeeds(task.model, task.tokens), self._view(nd), self.rng)
            if isinstance(d, NoHost):
                return None
            return d.node_id if isinstance(d, SendTo) else nd.node_id
        if self.policy == "random":
            return self.rng.choice(view).node_id
        if self.policy == "round_robin":
            ordered = sorted(view, key=lambda c: c.node_id)
            return ordered[next(self._rr) % len(ordered)].node_id
        fresh = [self.candidate(self.nodes[int(c.node_id[5:])]) for c in view]
        return min(fresh, key=lambda c: (c.queued + c.running, self.rng.random())).node_id

    # ------------------------------------------------------------------ results

    def holders(self) -> dict[str, list[str]]:
        """Task id -> run ids of the final copies held by live nodes."""
        out: dict[str, list[str]] = {}
        for nd in self.nodes:
            if nd.core is None:
                continue
            for c in nd.core.copies():
                if c.final and c.run_id is not None:
                    out.setdefault(c.task_id, []).append(c.run_id)
        return out

    def check(self) -> list[str]:
        """Every invariant over every accepted task (see `Ledger.check`)."""
        return self.ledger.check(self.holders())
