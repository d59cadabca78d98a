"""Ownership cores wired together in one process, for the core's unit tests.

Not a driver: `Send` commands are routed to the receiving core's `handle` as the
message itself, `RunLocally`/`Unqueue` keep a list per node standing in for its
scheduler, and a steal request is completed from that list. Every core checks its
invariants after every step (`check_invariants`, as dask's tests run
`validate_state`), so a step that breaks one fails where it happens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership import Ownership, Role
from meshlb.mesh.replication import TaskCopy
from meshlb.mesh.stealing import Waiting
from meshlb.tasks.model import TaskRecord

IDS = ("a", "b", "c", "d", "e")
T = TypeVar("T")


def rec(task_id: str = "t-1", model: str = "m", est: int = 100, prio: int = 5) -> TaskRecord:
    return TaskRecord(task_id, "generate", model, {}, prio, "a", 0.0, est_tokens=est)


def checked(node_id: str, live: set[str] | None = None, **kw: Any) -> Ownership:
    """A core that checks its invariants after every step."""
    return Ownership(node_id, live, **kw, check_invariants=True)


class Net:
    """Cores wired together; messages queue in `inflight` until `run()`."""

    def __init__(self, ids: tuple[str, ...] = IDS, replication: int = 2) -> None:
        self.cores = {i: checked(i, set(ids), replication=replication) for i in ids}
        self.queues: dict[str, list[str]] = {i: [] for i in ids}
        self.log: list[tuple[str, m.Command]] = []
        self.inflight: deque[tuple[str, m.Event]] = deque()
        self.drop: Callable[[str, str, m.Event], bool] = lambda src, dst, ev: False
        self.now = 0.0

    def feed(self, node: str, event: m.Event) -> None:
        self.apply(node, self.cores[node].handle(event, self.now))

    def apply(self, node: str, cmds: list[m.Command]) -> None:
        for c in cmds:
            self.log.append((node, c))
            q = self.queues[node]
            if isinstance(c, m.RunLocally):
                q.append(c.task_id)
            elif isinstance(c, m.Unqueue) and c.task_id in q:
                q.remove(c.task_id)
            elif isinstance(c, m.Send) and isinstance(c.msg, m.StealAsk):
                self.inflight.append((c.to, self._steal_event(c.to, c.msg)))
            elif isinstance(c, m.Send) and c.to in self.cores and not self.drop(node, c.to, c.msg):
                self.inflight.append((c.to, c.msg))

    def _steal_event(self, victim: str, ask: m.StealAsk) -> m.StealRequested:
        core = self.cores[victim]
        waiting = []
        for tid in self.queues[victim]:
            copy = core.get(tid)
            assert copy is not None
            waiting.append(Waiting(tid, copy.record.model, copy.record.est_tokens))
        return m.StealRequested(
            ask.sender, ask.n, ask.models, ask.tokens_per_s, tuple(waiting), 10.0, 1
        )

    def run(self) -> None:
        while self.inflight:
            dst, ev = self.inflight.popleft()
            if dst in self.cores:
                self.feed(dst, ev)

    def tick(self, dt: float) -> None:
        self.now += dt
        for node, core in list(self.cores.items()):
            self.apply(node, core.tick(self.now))
        self.run()

    def kill(self, node: str) -> None:
        del self.cores[node]
        self.inflight = deque((d, e) for d, e in self.inflight if d != node)
        for other in list(self.cores):
            self.feed(other, m.PeerDown(node))
        self.run()

    def cmds(self, kind: type[T], node: str | None = None) -> list[T]:
        """Commands of `kind` (a local command, or a message type: its `Send`s' messages)."""
        out: list[T] = []
        for n, c in self.log:
            item = c.msg if isinstance(c, m.Send) and kind is not m.Send else c
            if isinstance(item, kind) and (node is None or n == node):
                out.append(item)
        return out

    def sent(self, kind: type[T], node: str | None = None) -> list[tuple[str, T]]:
        """(destination, message) of the messages of `kind` sent."""
        return [(c.to, c.msg) for n, c in self.log if isinstance(c, m.Send)
                and isinstance(c.msg, kind) and (node is None or n == node)]  # fmt: skip

    def copy(self, node: str, task_id: str = "t-1") -> TaskCopy:
        """`node`'s copy of the task, which it must hold."""
        c = self.cores[node].get(task_id)
        assert c is not None, f"{node} holds no copy of {task_id}"
        return c

    def holders(self, task_id: str) -> dict[str, Role]:
        return {n: r for n, c in self.cores.items() if (r := c.role(task_id)) is not None}

    def start_and_finish(self, node: str, task_id: str, at: float = 1.0) -> None:
        self.feed(node, m.TaskStarted(task_id, at))
        self.feed(node, m.TaskFinished(task_id, "succeeded", at + 1, result={"r": node}))
        self.run()


def accept(net: Net, node: str = "a", task_id: str = "t-1", **kw: Any) -> None:
    net.feed(node, m.TaskAccepted(rec(task_id), **kw))
    net.run()
