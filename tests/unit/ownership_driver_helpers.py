"""In-process wiring for `OwnershipDriver` tests: a fake executor, the shipped
placement service over a hand-made membership, and a network that carries every
message through the real wire codec.

Nothing here sleeps or does I/O. Messages wait in `WireNet.inflight` until `flush()`
(synchronous) or the `pump()` task (for tests that run the drivers' `run()` loops
under the mock clock) delivers them, so each step of a protocol can be looked at.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from meshlb.events import EventLog
from meshlb.gossip.events import MemberJoined
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.meta import Load, NodeMeta, encode_meta
from meshlb.mesh.ownership_driver import OwnershipConfig, OwnershipDriver, OwnershipPorts
from meshlb.mesh.ownership_wire import Batch, decode_batch, encode_batch
from meshlb.mesh.placement import Candidate
from meshlb.mesh.placement_service import MemberLoad, PlacementService
from meshlb.mesh.replication import choose_replicas
from meshlb.mesh.stealing import Waiting
from meshlb.tasks.model import TaskRecord

MODEL = "m:1b"  # canonical (tagged), as node candidates always are


def record(task_id: str, model: str = MODEL, est: int = 100) -> TaskRecord:
    return TaskRecord(task_id, "generate", model, {"prompt": "hi"}, 5, "A", 0.0, est_tokens=est)


def meta(boot: str, models: tuple[str, ...] = (MODEL,), queued: int = 0) -> bytes:
    """Gossip metadata as a real node announces it (only the boot id matters here)."""
    return encode_meta(NodeMeta("10.0.0.1:11500", models, Load(queued=queued), boot=boot))


def candidate(
    node_id: str, models: tuple[str, ...] = (MODEL,), *, queued: int = 0, tps: float = 10.0,
    is_local: bool = False,
) -> Candidate:  # fmt: skip
    return Candidate(node_id, frozenset(models), queued, 0, 1, tps, is_local=is_local)


@dataclass
class FakeExecutor:
    """Records what the driver asks; `queue` is the local scheduler's queue (in order)."""

    node_id: str
    free: int = 0  # what free_slots() answers (0: never idle unless a test says so)
    queue: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    records: dict[str, TaskRecord] = field(default_factory=dict)
    runs: list[tuple[str, str]] = field(default_factory=list)  # (task id, reason)
    unqueued: list[str] = field(default_factory=list)
    finals: list[tuple[TaskRecord, bool]] = field(default_factory=list)

    def run_owned(self, record: TaskRecord, reason: str) -> None:
        self.runs.append((record.id, reason))
        self.records[record.id] = record
        if record.id not in self.queue and record.id not in self.running:
            self.queue.append(record.id)

    def unqueue(self, task_id: str) -> None:
        self.unqueued.append(task_id)
        if task_id in self.queue:
            self.queue.remove(task_id)

    def record_final(self, record: TaskRecord, decided_here: bool) -> None:
        self.finals.append((record, decided_here))

    def waiting(self) -> tuple[Waiting, ...]:
        return tuple(
            Waiting(t, self.records[t].model, self.records[t].est_tokens) for t in self.queue
        )

    def free_slots(self) -> int:
        return self.free

    def ran(self) -> list[str]:
        return [task_id for task_id, _ in self.runs]


@dataclass
class FakeMembers:
    """The membership the placement service reads: set `local` and `alive_peers`."""

    local: Candidate
    alive_peers: list[Candidate] = field(default_factory=list)

    def local_candidate(self) -> Candidate:
        return self.local

    def peers(self) -> list[MemberLoad]:
        return [MemberLoad(c, "alive", 1) for c in self.alive_peers]


class WireSender:
    """What `PeerMailer` is to a node: `send(cmd)`, here into the in-memory network."""

    def __init__(self, net: WireNet, node_id: str, boot: str) -> None:
        self.net, self.node_id, self.boot = net, node_id, boot

    def send(self, cmd: m.Send) -> None:
        self.net.post(self.node_id, self.boot, cmd)


class Node:
    """One driver with its fake executor and view, wired to the network."""

    def __init__(
        self, net: WireNet, node_id: str, boot: str, replication: int,
        models: tuple[str, ...], tps: float,
    ) -> None:  # fmt: skip
        self.node_id, self.boot = node_id, boot
        self.executor = FakeExecutor(node_id)
        self.view = FakeMembers(candidate(node_id, models, tps=tps, is_local=True))
        placement = PlacementService(node_id, self.view, random.Random(0))
        ports = OwnershipPorts(self.executor, placement, WireSender(net, node_id, boot),
                               EventLog(node_id))  # fmt: skip
        config = OwnershipConfig(node_id, replication, check_invariants=True)
        self.driver = OwnershipDriver(config, ports)

    def start(self, task_id: str, at: float = 1.0) -> None:
        """The local scheduler started the task."""
        self.executor.queue.remove(task_id)
        self.executor.running.add(task_id)
        self.driver.feed(m.TaskStarted(task_id, at))

    def finish(
        self, task_id: str, result: Any = None, state: str = "succeeded", at: float = 2.0
    ) -> None:
        """A local run ended with a final state."""
        self.executor.running.discard(task_id)
        self.driver.feed(m.TaskFinished(task_id, state, at, result=result))

    def role(self, task_id: str) -> str | None:
        return self.driver.core.role(task_id)


class WireNet:
    """Drivers connected by encode_batch/decode_batch; one command per batch, FIFO."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.inflight: deque[tuple[str, bytes]] = deque()  # (destination, body)
        self.down: set[str] = set()  # messages to these are lost
        self.hold: Callable[[str, Batch], bool] = lambda dst, batch: False
        self.held: list[tuple[str, bytes]] = []
        self.delivered: list[tuple[str, str, str]] = []  # (sender, receiver, item type)
        self.lost = 0
        self._ready = trio.Event()

    def add(
        self, node_id: str, boot: str = "boot-1", *, replication: int = 2,
        models: tuple[str, ...] = (MODEL,), tps: float = 10.0,
    ) -> Node:  # fmt: skip
        node = self.nodes[node_id] = Node(self, node_id, boot, replication, models, tps)
        return node

    def introduce(self) -> None:
        """Every node learns every other from gossip (MemberJoined with its meta)."""
        for node in self.nodes.values():
            for other in self.nodes.values():
                if other is not node:
                    node.driver.on_gossip(
                        MemberJoined(other.node_id, ("10.0.0.1", 7946), 1, meta(other.boot))
                    )

    def post(self, sender: str, boot: str, cmd: m.Send) -> None:
        self.inflight.append((cmd.to, encode_batch(sender, boot, [cmd])))
        self._ready.set()

    def flush(self) -> None:
        """Deliver until nothing is in flight (replies included)."""
        while self.inflight:
            dst, body = self.inflight.popleft()
            self.deliver(dst, body)

    def deliver(self, dst: str, body: bytes) -> None:
        batch = decode_batch(body)
        if dst in self.down or dst not in self.nodes:
            self.lost += 1
            return
        if self.hold(dst, batch):
            self.held.append((dst, body))
            return
        for item in batch.items:
            self.delivered.append((batch.sender, dst, type(item).__name__))
        self.nodes[dst].driver.receive(batch)

    def release(self) -> None:
        """Stop holding, deliver what was held, then everything it causes."""
        self.hold = lambda dst, batch: False
        held, self.held = self.held, []
        for dst, body in held:
            self.deliver(dst, body)
        self.flush()

    def sent_types(self, sender: str | None = None) -> list[str]:
        return [t for s, _, t in self.delivered if sender is None or s == sender]

    async def pump(self) -> None:
        """Deliver in the background (while drivers' run() loops fire their timers)."""
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            self.flush()


def holds(kind: type[Any]) -> Callable[[str, Batch], bool]:
    """A `WireNet.hold` that keeps back batches carrying an item of `kind`."""
    return lambda dst, batch: any(isinstance(i, kind) for i in batch.items)


def task_replicated_on(owner: str, replica: str, live: set[str]) -> str:
    """A task id whose replica (R=2), chosen by rendezvous on `owner`, is `replica`."""
    for i in range(1000):
        task_id = f"t-{i}"
        if choose_replicas(task_id, owner, (), live, 1) == (replica,):
            return task_id
    raise AssertionError("no such task id")


def mesh(*ids: str) -> WireNet:
    net = WireNet()
    for node_id in ids:
        net.add(node_id)
    net.introduce()
    net.flush()
    return net


@asynccontextmanager
async def running(net: WireNet, *ids: str) -> AsyncIterator[None]:
    """The drivers' run() loops (timers, idle checks) and background delivery."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.pump)
        for node_id in ids:
            nursery.start_soon(net.nodes[node_id].driver.run)
        yield
        nursery.cancel_scope.cancel()
