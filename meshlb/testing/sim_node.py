"""One simulated meshlb node: the shipped drivers composed as a node composes them,
on the memory network, beside a stand-in Ollama whose service time is virtual.

What is real: the gossip driver (SWIM over `MemoryGossipTransport`), the scheduler
driver, the task service and its workers, the ownership driver and its mailer (over
`MemoryRequests`, through the real wire codec). What stands in: the Ollama backend
(`SimBackend`: `trio.sleep` for tokens / speed), the announcer (this node's load in
its gossip metadata, every `announce_s` when it changed) and the strategy inside the
shipped `PlacementService` (meshlb's own, or a baseline the benchmark compares).
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import trio

from meshlb.events import EventLog
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.driver import GossipDriver
from meshlb.gossip.events import Event as GossipEvent
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.candidates import candidate
from meshlb.mesh.mailer import PeerMailer
from meshlb.mesh.meta import Load, NodeMeta, decode_meta, encode_meta
from meshlb.mesh.ownership_driver import (
    IDLE_CHECK_S,
    Executor,
    OwnershipConfig,
    OwnershipDriver,
    OwnershipPorts,
)
from meshlb.mesh.ownership_wire import decode_batch
from meshlb.mesh.placement import Candidate
from meshlb.mesh.placement_service import MemberLoad, PlacementService, Strategy
from meshlb.model_names import canonical_model
from meshlb.sched.driver import LocalScheduler
from meshlb.sched.limits import Limits
from meshlb.tasks.service import TaskService, TaskSpec
from meshlb.testing.memnet_trio import TrioNetwork

Addr = tuple[str, int]
quiet = structlog.get_logger("meshlb.sim")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    tokens_per_s: float
    slots: int
    models: frozenset[str]


class SimBackend:
    """Ollama stand-in: a generation of n tokens takes n / tokens_per_s virtual seconds.
    The scheduler gives it at most `slots` at once, as it would a real Ollama."""

    def __init__(self, node: SimNode) -> None:
        self.node = node

    async def post_json(self, path: str, payload: dict[str, Any], /) -> tuple[int, bytes]:
        node, task_id = self.node, payload["sim_task"]
        tokens = max(1, int(payload["options"]["num_predict"]))
        node.runs[task_id] = node.clock()
        node.hooks.started(task_id)
        try:
            await trio.sleep(tokens / node.spec.tokens_per_s)
        finally:
            node.runs.pop(task_id, None)  # a crash may have cleared them
        node.hooks.completed(task_id)
        body = {"node": node.node_id, "eval_count": tokens, "done": True,
                "eval_duration": int(tokens / node.spec.tokens_per_s * 1e9)}  # fmt: skip
        return 200, json.dumps(body).encode()


class Hooks(Protocol):
    """What the simulator's ledger hears from a node."""

    def started(self, task_id: str) -> None: ...
    def completed(self, task_id: str) -> None: ...
    def command(self, node: str, at: float, cmd: m.Command) -> None: ...
    def gossip(self, idx: int, ev: GossipEvent) -> None: ...


class SimNode:
    """One node's parts; `boot()` builds a fresh process, `run()` runs it."""

    def __init__(
        self, idx: int, spec: NodeSpec, net: TrioNetwork, hooks: Hooks, *,
        seed: int, replication: int, gossip: GossipConfig, announce_s: float,
        steal: bool, strategy: Strategy, clock: Callable[[], float], validate: bool,
    ) -> None:  # fmt: skip
        self.idx, self.spec, self.net, self.hooks = idx, spec, net, hooks
        self.node_id = f"node-{idx:04d}"
        self.addr: Addr = (f"10.{idx >> 16}.{(idx >> 8) & 255}.{idx & 255}", 7946)
        self.seed, self.replication, self.gossip_config = seed, replication, gossip
        self.announce_s, self.steal, self.strategy, self.clock = (
            announce_s, steal, strategy, clock,
        )  # fmt: skip
        self.models = frozenset(canonical_model(name) for name in spec.models)
        self.validate = validate  # the ownership core's validate() after every step
        self.boots = 0
        self.runs: dict[str, float] = {}  # task id -> when its run here started
        self.alive = False
        self._next_ids: deque[str] = deque()
        self.rng = random.Random(seed)

    # ---- one process --------------------------------------------------------------

    def boot(self, seeds: list[Addr]) -> None:
        """A new process: empty queue, empty core, a new boot id."""
        self.boots += 1
        self.boot_id = f"boot-{self.boots}"
        seed = self.seed * 1_000_003 + self.idx * 7919 + self.boots * 104729
        self.rng = random.Random(seed)
        self.scheduler = LocalScheduler(Limits(max_concurrency=self.spec.slots,
                                               max_queue=100_000))  # fmt: skip
        self.placement = PlacementService(self.node_id, self, self.rng, strategy=self.strategy)
        self.mailer = PeerMailer(self.node_id, self.boot_id, self.net.requests_from(self.addr))
        self.tasks = TaskService(
            self.node_id, self.scheduler, SimBackend(self), None, 3600.0, 1,
            mesh=self._ownership, wall_clock=self.clock, new_id=self._next_ids.popleft,
        )  # fmt: skip
        self.gossip = GossipDriver(
            self.gossip_config, self.node_id, self.addr, self.addr, seeds, self._meta(),
            None, quiet, transport=self.net.gossip_transport(self.addr),
            rng=random.Random(seed + 1), boot_epoch_us=int(trio.current_time() * 1e6),
        )  # fmt: skip
        self.runs.clear()
        self._announced = self._meta()

    def _ownership(self, executor: Executor) -> OwnershipDriver:
        config = OwnershipConfig(
            self.node_id, self.replication, idle_check_s=IDLE_CHECK_S if self.steal else None,
            check_invariants=self.validate,
        )  # fmt: skip
        ports = OwnershipPorts(
            executor, self.placement, self.mailer, EventLog(self.node_id, self.clock),
            observe=lambda at, cmd: self.hooks.command(self.node_id, at, cmd),
        )  # fmt: skip
        return OwnershipDriver(config, ports)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The node until cancelled (a crash is a cancellation: nothing runs after)."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.scheduler.run)
            await nursery.start(self.mailer.run)
            await nursery.start(self.tasks.run)
            events = self.gossip.subscribe()
            await nursery.start(self.gossip.run)
            self.net.serve_requests(self.node_id, self.addr, self._receive)
            nursery.start_soon(self._follow_gossip, events)
            nursery.start_soon(self._announce)
            self.alive = True
            task_status.started()

    async def _receive(self, body: bytes) -> bytes:
        """The ownership batch endpoint (`internal_routes` in a node)."""
        self.tasks.mesh.receive(decode_batch(body))
        return b""

    async def _follow_gossip(self, events: trio.MemoryReceiveChannel[GossipEvent]) -> None:
        async for ev in events:
            self.hooks.gossip(self.idx, ev)
            self.tasks.mesh.on_gossip(ev)

    def _meta(self) -> bytes:
        sched = self.scheduler.core
        load = Load(sched.queued, sched.running, self.spec.slots,
                    tokens_per_s=self.spec.tokens_per_s)  # fmt: skip
        meta = NodeMeta(self.node_id, tuple(sorted(self.spec.models)), load, boot=self.boot_id)
        return encode_meta(meta)

    async def _announce(self) -> None:
        while True:
            await trio.sleep(self.announce_s)
            meta = self._meta()
            if meta != self._announced:
                self._announced = meta
                self.gossip.update_meta(meta)

    async def submit(self, task_id: str, model: str, tokens: int, priority: int,
                     forward_to: str | None) -> None:  # fmt: skip
        """A client's POST /v1/tasks to this node (placement already decided)."""
        request = {"sim_task": task_id, "options": {"num_predict": tokens}}
        spec = TaskSpec("generate", model, request, priority, None, None)
        self._next_ids.append(task_id)  # the id submit draws, before its first await
        await self.tasks.submit(spec, forward_to)

    # ---- the mesh as this node's placement service reads it (MeshMembers) ------

    def local_candidate(self) -> Candidate:
        sched = self.scheduler.core
        return Candidate(self.node_id, self.models, sched.queued, sched.running,
                         self.spec.slots, self.spec.tokens_per_s, is_local=True)  # fmt: skip

    def peers(self) -> list[MemberLoad]:
        out = []
        for member in self.gossip.members():
            meta = decode_meta(member.meta) if member.node_id != self.node_id else None
            if meta is not None:
                c = candidate(member.node_id, meta, is_local=False)
                out.append(MemberLoad(c, member.state, member.incarnation))
        return out
