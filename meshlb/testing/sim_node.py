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

    def __init__(self, host: SimNode) -> None:
        self.host = host

    async def post_json(self, path: str, payload: dict[str, Any], /) -> tuple[int, bytes]:
        host, task_id = self.host, payload["sim_task"]
        tokens = max(1, int(payload["options"]["num_predict"]))
        service_s = tokens / host.spec.tokens_per_s
        host.runs[task_id] = host.clock()
        host.hooks.started(task_id)
        try:
            await trio.sleep(service_s)
        finally:
            host.runs.pop(task_id, None)  # a crash may have cleared them
        host.hooks.completed(task_id)
        body = {"node": host.node_id, "eval_count": tokens, "done": True,
                "eval_duration": int(service_s * 1e9)}  # fmt: skip
        return 200, json.dumps(body).encode()


class Hooks(Protocol):
    """What the simulator's ledger hears from a node."""

    def started(self, task_id: str) -> None: ...
    def completed(self, task_id: str) -> None: ...
    def command(self, node: str, at: float, cmd: m.Command) -> None: ...
    def gossip(self, idx: int, ev: GossipEvent) -> None: ...


class SimNode:
    """One host: what survives a restart (its address, speed, models, the runs in
    progress on its Ollama) and its current process (`None` while it is down)."""

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
        self.process: SimProcess | None = None

    @property
    def alive(self) -> bool:
        """A process is up and started (it answers the network)."""
        return self.process is not None and self.process.started

    def boot(self, seeds: list[Addr]) -> SimProcess:
        """A new process: empty queue, empty core, a new boot id."""
        self.boots += 1
        self.runs.clear()
        self.process = SimProcess(self, self.boots, seeds)
        return self.process

    def crash(self) -> None:
        self.process = None
        self.runs.clear()


class SimProcess:
    """One life of a node, its parts built once in dependency order, as a node
    builds them: scheduler, placement, mailer, task service (and through it the
    ownership driver), gossip."""

    def __init__(self, host: SimNode, boot: int, seeds: list[Addr]) -> None:
        self.host, self.node_id = host, host.node_id
        self.boot_id = f"boot-{boot}"
        seed = host.seed * 1_000_003 + host.idx * 7919 + boot * 104729
        self.rng = random.Random(seed)
        self.scheduler = LocalScheduler(Limits(max_concurrency=host.spec.slots,
                                               max_queue=100_000))  # fmt: skip
        self.placement = PlacementService(self.node_id, self, self.rng, strategy=host.strategy)
        self.mailer = PeerMailer(self.node_id, self.boot_id, host.net.requests_from(host.addr))
        self._next_ids: deque[str] = deque()
        self.tasks = TaskService(
            self.node_id, self.scheduler, SimBackend(host), None, 3600.0, 1,
            mesh=self._ownership, wall_clock=host.clock, new_id=self._next_ids.popleft,
        )  # fmt: skip
        self._announced = self._meta()
        self.gossip = GossipDriver(
            host.gossip_config, self.node_id, host.addr, host.addr, seeds, self._announced,
            None, quiet, transport=host.net.gossip_transport(host.addr),
            rng=random.Random(seed + 1), boot_epoch_us=int(trio.current_time() * 1e6),
        )  # fmt: skip
        self.started = False
        self._nursery: trio.Nursery | None = None

    def _ownership(self, executor: Executor) -> OwnershipDriver:
        host = self.host
        config = OwnershipConfig(
            self.node_id, host.replication, idle_check_s=IDLE_CHECK_S if host.steal else None,
            check_invariants=host.validate,
        )  # fmt: skip
        ports = OwnershipPorts(
            executor, self.placement, self.mailer, EventLog(self.node_id, host.clock),
            observe=lambda at, cmd: host.hooks.command(self.node_id, at, cmd),
        )  # fmt: skip
        return OwnershipDriver(config, ports)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The process until cancelled (a crash is a cancellation: nothing runs after)."""
        host = self.host
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.scheduler.run)
            await nursery.start(self.mailer.run)
            await nursery.start(self.tasks.run)
            events = self.gossip.subscribe()
            await nursery.start(self.gossip.run)
            host.net.serve_requests(self.node_id, host.addr, self._receive)
            nursery.start_soon(self._follow_gossip, events)
            nursery.start_soon(self._announce)
            self.started = True
            task_status.started()

    async def _receive(self, body: bytes) -> bytes:
        """The ownership batch endpoint (`internal_routes` in a node)."""
        self.tasks.mesh.receive(decode_batch(body))
        return b""

    async def _follow_gossip(self, events: trio.MemoryReceiveChannel[GossipEvent]) -> None:
        async for ev in events:
            self.host.hooks.gossip(self.host.idx, ev)
            self.tasks.mesh.on_gossip(ev)

    def _meta(self) -> bytes:
        spec, sched = self.host.spec, self.scheduler.core
        load = Load(sched.queued, sched.running, spec.slots, tokens_per_s=spec.tokens_per_s)
        meta = NodeMeta(self.node_id, tuple(sorted(spec.models)), load, boot=self.boot_id)
        return encode_meta(meta)

    async def _announce(self) -> None:
        while True:
            await trio.sleep(self.host.announce_s)
            meta = self._meta()
            if meta != self._announced:
                self._announced = meta
                self.gossip.update_meta(meta)

    def submit(self, task_id: str, model: str, tokens: int, priority: int,
               forward_to: str | None, accepted: Callable[[], None]) -> None:  # fmt: skip
        """A client's POST /v1/tasks to this node (placement already decided);
        `accepted` is called just as the core learns of the task."""
        request = {"sim_task": task_id, "options": {"num_predict": tokens}}
        spec = TaskSpec("generate", model, request, priority, None, None)

        async def post() -> None:
            accepted()
            self._next_ids.append(task_id)  # the id submit draws, before its first await
            await self.tasks.submit(spec, forward_to)

        assert self._nursery is not None, "submit only to a started process"
        self._nursery.start_soon(post)

    # ---- the mesh as this node's placement service reads it (MeshMembers) ------

    def local_candidate(self) -> Candidate:
        spec, sched = self.host.spec, self.scheduler.core
        return Candidate(self.node_id, self.host.models, sched.queued, sched.running,
                         spec.slots, spec.tokens_per_s, is_local=True)  # fmt: skip

    def peers(self) -> list[MemberLoad]:
        out = []
        for member in self.gossip.members():
            meta = decode_meta(member.meta) if member.node_id != self.node_id else None
            if meta is not None:
                c = candidate(member.node_id, meta, is_local=False)
                out.append(MemberLoad(c, member.state, member.incarnation))
        return out
