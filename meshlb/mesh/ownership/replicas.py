"""Owner-side replication: send every revision to the replicas, re-send until acked.

Durability: the owner replicates every state change to R-1 replicas (sticky,
rendezvous-filled; `replication.choose_replicas`); replicas ack each revision and
the owner re-sends every `ACK_RETRY_S` until each live one has, so a lost message
never leaves a replica behind. `acked_by` remembers who acked any revision of this
epoch: such a replica holds the task and can take it over, which is what a 202
promises (`held_elsewhere`).
"""

from __future__ import annotations

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership.members import Members
from meshlb.mesh.ownership.roles import Role, Table
from meshlb.mesh.ownership.shared import ACK_RETRY_S, Outbox, Timers
from meshlb.mesh.replication import TaskCopy, choose_replicas


class Replicas:
    """Acks and re-sends of the copies this node owns."""

    def __init__(self, table: Table, members: Members, out: Outbox, replication: int) -> None:
        self.table, self.members, self.out = table, members, out
        self.count = replication - 1  # replicas besides the owner
        self.unacked: dict[str, set[str]] = {}  # owner: replicas yet to ack this revision
        self.acked_by: dict[str, set[str]] = {}  # owner: replicas that acked this epoch
        self.retry = Timers()
        table.on_move.append(self.role_changed)

    def choose(self, task_id: str, owner: str, keep: tuple[str, ...]) -> tuple[str, ...]:
        return choose_replicas(task_id, owner, keep, self.members.live, self.count)

    def live_replicas(self, c: TaskCopy) -> set[str]:
        me, live = self.members.me, self.members.live
        return {n for n in c.replicas if n in live and n != me}

    def replicate(self, c: TaskCopy, now: float, skip: str | None = None) -> None:
        """Send `c` to its replicas (`skip` already has it). When it is our own
        current copy, track the acks and re-send until each has acked it."""
        targets = {n for n in c.replicas if n != skip and n != self.members.me}
        for node in sorted(targets):
            self.out.send(node, m.Replicate(c))
        e = self.table.get(c.task_id)
        if e is not None and e.copy is c and e.role is Role.OWNER:
            self.unacked[c.task_id] = targets
            if targets:
                self.retry.arm(c.task_id, now + ACK_RETRY_S)

    def acked(self, ev: m.AckReplica) -> bool:
        """A replica acked; True if it acked our current revision."""
        e = self.table.get(ev.task_id)
        if e is None or e.role is not Role.OWNER or e.copy.epoch != ev.epoch:
            return False
        self.acked_by.setdefault(ev.task_id, set()).add(ev.sender)  # an older rev still counts
        if e.copy.rev != ev.rev:
            return False
        self.unacked.get(ev.task_id, set()).discard(ev.sender)
        return True

    def all_acked(self, task_id: str) -> bool:
        return not self.unacked.get(task_id)

    def resend_due(self, now: float) -> list[str]:
        """Re-send what is still unacked (to live replicas only). Returns the owned
        tasks whose timer fired with nothing left to wait for."""
        settled: list[str] = []
        for task_id in self.retry.due(now):
            e = self.table.get(task_id)
            if e is None or e.role is not Role.OWNER:
                continue
            unacked = self.unacked.get(task_id, set()) & self.members.live
            self.unacked[task_id] = unacked
            for node in sorted(unacked):
                self.out.send(node, m.Replicate(e.copy))
            if unacked:
                self.retry.arm(task_id, now + ACK_RETRY_S)
            else:
                settled.append(task_id)
        return settled

    def role_changed(self, task_id: str, role: Role | None) -> None:
        if role is not Role.OWNER:
            self.reset(task_id)

    def reset(self, task_id: str) -> None:
        """A new ownership (or none): forget the acks of the old one."""
        self.unacked.pop(task_id, None)
        self.acked_by.pop(task_id, None)
        self.retry.cancel(task_id)

    def settled(self, c: TaskCopy) -> bool:
        return not (self.unacked.get(c.task_id, set()) & self.live_replicas(c))

    def held_by_a_replica(self, c: TaskCopy) -> bool:
        return bool(self.live_replicas(c) & self.acked_by.get(c.task_id, set()))

    def next_deadline(self) -> float | None:
        return self.retry.next_deadline()

    def validate(self) -> None:
        for task_id in self.unacked.keys() | self.acked_by.keys():
            assert self.table.role(task_id) is Role.OWNER, f"acks kept for {task_id}"
