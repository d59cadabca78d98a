"""The whole mesh in virtual time, running the shipped code.

Each node is a real composition (`sim_node.SimNode`: gossip driver, scheduler driver,
task service, ownership driver and mailer) on one `MemoryNetwork`, with a stand-in
Ollama whose service time is `trio.sleep`. Everything runs in one `trio.run` under
`MockClock(autojump_threshold=0)`: when every task waits, the clock jumps to the next
deadline, so ten virtual minutes of a busy mesh take seconds. One seed fixes the
network's draws, every node's randomness and Trio's own scheduling order, so the
same inputs give the same run.

    sim = simulate(specs, scenario, seed=1)   # scenario: async (sim) -> None

The mesh boots first (every node joins node 0 and gossip converges); virtual time 0
of the scenario is the moment it has. `sim.check()` then checks the exactly-once
invariants (`mesh_check.Ledger`) over every accepted task.

Modelling choices (why): a crash cancels the node's Trio tasks and takes its address
off the network (what was in flight to it is lost); a restart is a fresh
composition at the same address with a new boot id, seen by peers through gossip
metadata (PeerRestarted), so a node that restarts faster than dead-detection does
not strand its tasks. Placement is a `Strategy` (`sim_policies`): meshlb's own, or a
baseline. Node-to-node batches are lost when the network says unreachable; the
protocol must survive loss (the core re-sends).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import structlog
import trio
import trio._core._run as trio_run
from trio.testing import MockClock

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.events import Event as GossipEvent
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership import Ownership
from meshlb.mesh.placement import NoHost
from meshlb.testing.memnet import LinkModel, MemoryNetwork
from meshlb.testing.memnet_trio import TrioNetwork
from meshlb.testing.mesh_check import Ledger, SimTask
from meshlb.testing.sim_node import NodeSpec, SimNode
from meshlb.testing.sim_policies import POLICIES, strategy

__all__ = ["POLICIES", "MeshSim", "NodeSpec", "simulate"]

Scenario = Callable[["MeshSim"], Awaitable[None]]
CONVERGE_LIMIT_S = 60.0


class MeshSim:
    """N meshlb nodes in virtual time. `policy` picks placement: meshlb, local (run
    where accepted), or a baseline (round_robin / random / least_conn); `steal`
    defaults to on for meshlb and local, off for the baselines; `validate` runs every
    ownership core's `validate()` after each of its steps."""

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
        steal: bool | None = None,
        validate: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.seed, self.policy = seed, policy
        self.rng = random.Random(seed * 31 + 7)
        self.net = TrioNetwork(MemoryNetwork(seed, link))
        self.ledger = Ledger()
        self.gossip_log: list[tuple[float, int, GossipEvent]] = []
        self.crashes: list[tuple[float, str, frozenset[str]]] = []
        self.last_arrival_at = 0.0
        self.t0 = 0.0
        self._scopes: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        steal = steal if steal is not None else policy in ("meshlb", "local")
        chosen = strategy(policy, self._load_of)
        config = gossip or GossipConfig()
        self.nodes = [
            SimNode(
                i,
                s,
                self.net,
                self,
                seed=seed,
                replication=replication,
                gossip=config,
                announce_s=announce_s,
                steal=steal,
                strategy=chosen,
                clock=self._now,
                validate=validate,
            )
            for i, s in enumerate(specs)
        ]
        self._by_id = {nd.node_id: nd for nd in self.nodes}

    # ------------------------------------------------------------------ time

    def _now(self) -> float:
        return trio.current_time() - self.t0

    @property
    def now(self) -> float:
        return self._now()

    async def run_until(self, t: float) -> None:
        await trio.sleep_until(self.t0 + t)

    async def run_for(self, duration_s: float) -> None:
        await trio.sleep(duration_s)

    async def drain(self, limit_s: float = 600.0, step_s: float = 5.0) -> None:
        """Run past the last arrival, then until every accepted task has a recorded
        result (or `limit_s` more), then a little longer so replication settles."""
        await self.run_until(max(self.now, self.last_arrival_at))
        end = self.now + limit_s
        ledger = self.ledger
        while self.now < end and len(ledger.final_at) < len(ledger.accepted):
            await self.run_for(step_s)
        await self.run_for(step_s)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run `fn` at virtual time t (fault injection)."""

        async def later() -> None:
            await self.run_until(t)
            fn()

        self._spawn(later)

    def _spawn(self, fn: Callable[[], Awaitable[Any]]) -> None:
        assert self._nursery is not None, "the mesh runs inside simulate()"
        self._nursery.start_soon(fn)

    # ------------------------------------------------------------------ boot

    async def _boot_all(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        for nd in self.nodes:
            self._start(nd, [] if nd.idx == 0 else [self.nodes[0].addr])
        everyone = {nd.node_id for nd in self.nodes}
        with trio.fail_after(CONVERGE_LIMIT_S):
            # no event says "everyone knows everyone": look every 50 ms
            while not all(self._knows(nd, everyone) for nd in self.nodes):  # noqa: ASYNC110
                await trio.sleep(0.05)
        self.t0 = math.ceil(trio.current_time())
        await trio.sleep_until(self.t0)

    def _knows(self, nd: SimNode, everyone: set[str]) -> bool:
        core = self.core(nd.idx)
        return core is not None and core.live == everyone

    def _start(self, nd: SimNode, seeds: list[tuple[str, int]]) -> None:
        process = nd.boot(seeds)
        scope = self._scopes[nd.idx] = trio.CancelScope()

        async def life() -> None:
            with scope:
                await process.run()
                await trio.sleep_forever()

        self._spawn(life)

    # ------------------------------------------------------------------ faults

    def crash(self, idx: int) -> None:
        nd, core = self.nodes[idx], self.core(idx)
        if core is None:
            return
        self.crashes.append((self.now, nd.node_id, frozenset(c.task_id for c in core.owned())))
        nd.crash()
        self._scopes[idx].cancel()
        self.net.model.crash(nd.addr)
        self.net.forget(nd.addr)

    def restart(self, idx: int) -> None:
        nd = self.nodes[idx]
        self.net.model.restart(nd.addr)
        self._start(nd, [self.nodes[i].addr for i in self.live_indices()])

    def partition(self, *groups: Sequence[int]) -> None:
        self.net.model.partition(*[[self.nodes[i].addr for i in g] for g in groups])

    def heal(self) -> None:
        self.net.model.heal()

    def live_indices(self) -> list[int]:
        return [nd.idx for nd in self.nodes if nd.alive]

    def core(self, idx: int) -> Ownership | None:
        """Node idx's ownership core, or None while it is down."""
        process = self.nodes[idx].process
        return process.tasks.mesh.core if process is not None and process.started else None

    # ------------------------------------------------------------------ workload

    def submit(self, tasks: Iterable[SimTask]) -> None:
        """Clients send these tasks, each at its `arrive_at`, to its entry node (a
        random live one when it has none or it is down)."""
        ordered = sorted(tasks, key=lambda t: (t.arrive_at, t.task_id))
        if ordered:
            self.last_arrival_at = max(self.last_arrival_at, ordered[-1].arrive_at)

        async def arrivals() -> None:
            for task in ordered:
                await self.run_until(task.arrive_at)
                self._arrive(task)

        self._spawn(arrivals)

    def _arrive(self, task: SimTask) -> None:
        live = self.live_indices()
        if not live:
            self.ledger.rejected += 1
            return
        entry = task.entry if task.entry in live else self.rng.choice(live)
        process = self.nodes[entry].process
        assert process is not None
        placed = process.placement.place(task.model, task.tokens)
        if isinstance(placed.decision, NoHost):
            self.ledger.rejected += 1
            return
        to = placed.peer
        if to is not None:
            process.placement.sent(to)
        process.submit(task.task_id, task.model, task.tokens, task.priority, to,
                       lambda: self.ledger.accept(self.now, task))  # fmt: skip

    def _load_of(self, node_id: str) -> int:
        process = self._by_id[node_id].process
        if process is None:
            return 1 << 30
        sched = process.scheduler.core
        return sched.queued + sched.running

    # ------------------------------------------------------------------ hooks (sim_node.Hooks)

    def started(self, task_id: str) -> None:
        self.ledger.starts[task_id] += 1

    def completed(self, task_id: str) -> None:
        self.ledger.completions[task_id] += 1

    def command(self, node: str, at: float, cmd: m.Command) -> None:
        self.ledger.on_command(at - self.t0, node, cmd)

    def gossip(self, idx: int, ev: GossipEvent) -> None:
        self.gossip_log.append((self.now, idx, ev))

    # ------------------------------------------------------------------ results

    def holders(self) -> dict[str, list[str]]:
        """Task id -> run ids of the final copies held by live nodes."""
        out: dict[str, list[str]] = {}
        for idx in range(len(self.nodes)):
            core = self.core(idx)
            if core is None:
                continue
            for c in core.copies():
                if c.final and c.run_id is not None:
                    out.setdefault(c.task_id, []).append(c.run_id)
        return out

    def check(self) -> list[str]:
        """Every invariant over every accepted task (see `Ledger.check`)."""
        return self.ledger.check(self.holders())


def simulate(specs: Sequence[NodeSpec], scenario: Scenario, **kw: Any) -> MeshSim:
    """Boot a mesh of `specs` (keywords as `MeshSim`), run `scenario` on it in one
    `trio.run` under an autojumping mock clock, and return the stopped mesh."""
    sim = MeshSim(specs, **kw)
    trio_run._r.seed(sim.seed)  # Trio picks the order of same-instant tasks from this

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await sim._boot_all(nursery)
            await scenario(sim)
            nursery.cancel_scope.cancel()

    # Hundreds of nodes log every decision at info: keep errors only, for the run.
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        trio.run(main, clock=MockClock(autojump_threshold=0))
    finally:
        structlog.configure(**saved)
    return sim
