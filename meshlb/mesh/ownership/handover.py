"""The hand-over protocol (forward and steal): how ownership moves between nodes.

Ownership moves in three phases keyed by (task, epoch):

1. the old owner OFFERS the task at epoch+1 and stops running it (`HandOver`);
2. the new owner holds the offer as PENDING, not queued, and ACKS (`AckHandOver`);
3. the old owner CONFIRMS if its offer is still open (ownership moved; it stays as
   the first replica), or ABORTS if the offer expired and it took the task back at a
   higher epoch (`ConfirmHandOver`).

Why it holds: the new owner queues only on CONFIRM, and the old owner confirms only
an open offer, which it then never takes back — so a hand-over never makes two nodes
run a task. An unacked offer is taken back after `HANDOFF_TIMEOUT_S` or when its
target dies, and a lost CONFIRM is recovered by re-acking — so the task is never
dropped between them. If the old owner dies after an ack, the new owner adopts the
task (a duplicate run is possible only after a failure, which the spec allows).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership.members import Members
from meshlb.mesh.ownership.replicas import Replicas
from meshlb.mesh.ownership.roles import Change, Role, Table
from meshlb.mesh.ownership.shared import ACK_RETRY_S, Core, Outbox, OwnershipCounters, Timers
from meshlb.mesh.replication import TaskCopy

# An offer not acked in this time is taken back (a few round trips, plus a GC pause).
HANDOFF_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Pending:
    """An offer we hold (PENDING): who offered it, and our copy before it (restored
    if the offer is aborted)."""

    sender: str
    prev: TaskCopy | None


class HandOvers:
    """Offers this node made (OFFERING) and holds (PENDING), and their timers."""

    def __init__(self, core: Core, table: Table, members: Members, replicas: Replicas,
                 out: Outbox, counters: OwnershipCounters) -> None:  # fmt: skip
        self.core, self.table, self.members, self.replicas = core, table, members, replicas
        self.out, self.counters = out, counters
        self.offers: dict[str, TaskCopy] = {}  # OFFERING: the copy we offered
        self.pending: dict[str, Pending] = {}  # PENDING
        self.timers = Timers()  # OFFERING: take back; PENDING: ack again
        table.on_move.append(self.role_changed)

    def offer(self, copies: list[TaskCopy], to: str, now: float, reason: str) -> None:
        """Phase 1: stop running them here and offer them to `to` at epoch+1; the new
        owner's replicas are us first (we hold the copy already), then rendezvous."""
        me = self.members.me
        offers: list[TaskCopy] = []
        for c in copies:
            reps = self.replicas.choose(c.task_id, to, (me, *c.replicas))
            offer = c.with_owner(to, c.epoch + 1, reps)
            self.table.move(c, Change.OFFER, now)
            self.offers[c.task_id] = offer
            self.timers.arm(c.task_id, now + HANDOFF_TIMEOUT_S)
            offers.append(offer)
            if reason != "forward":
                self.out.emit(m.Unqueue(c.task_id))
        self.counters.handed_over += len(offers)
        self.out.send(to, m.HandOver(tuple(offers), reason))

    def on_offer(self, ev: m.HandOver, now: float) -> None:
        """Phase 2: hold each new offer as PENDING (not queued yet) and ack it."""
        keys: list[m.TaskKey] = []
        for c in ev.copies:
            e = self.table.get(c.task_id)
            if e is not None and e.role is Role.PENDING and e.copy.version == c.version:
                keys.append((c.task_id, c.epoch))  # a repeated offer: ack again
                continue
            if e is not None and (e.copy.final or e.copy.version >= c.version):
                continue  # stale: we already hold something newer
            if e is not None and (e.role in (Role.OWNER, Role.OFFERING)
                                  or c.task_id in self.table.running):  # fmt: skip
                self.out.send(ev.sender, m.Replicate(e.copy))  # two owners: show ours
                continue
            self.table.move(c, Change.HOLD_OFFER, now)
            self.pending[c.task_id] = Pending(ev.sender, e.copy if e is not None else None)
            self.timers.arm(c.task_id, now + ACK_RETRY_S)
            keys.append((c.task_id, c.epoch))
        if keys:
            self.out.send(ev.sender, m.AckHandOver(tuple(keys)))

    def on_ack(self, ev: m.AckHandOver, now: float) -> None:
        """Phase 3 (old owner): commit the offers still open, abort the expired ones.
        A task we no longer know was committed earlier (we drop a copy only when a
        newer owner tells us), so it is confirmed again."""
        committed: list[m.TaskKey] = []
        aborted: list[m.TaskKey] = []
        for task_id, epoch in ev.keys:
            e = self.table.get(task_id)
            offer = self.offers.get(task_id)
            if e is not None and e.role is Role.OFFERING and offer is not None \
                    and offer.epoch == epoch and offer.owner == ev.sender:  # fmt: skip
                self._commit(e.copy, offer, now)
                committed.append((task_id, epoch))
            elif e is None or (e.copy.owner == ev.sender and e.copy.epoch >= epoch):
                committed.append((task_id, epoch))
            else:
                aborted.append((task_id, epoch))
        self.out.send(ev.sender, m.ConfirmHandOver(tuple(committed), tuple(aborted)))

    def _commit(self, old: TaskCopy, offer: TaskCopy, now: float) -> None:
        self.table.move(offer, Change.COMMIT, now)
        for node in old.replicas:  # old replicas not in the new list forget the task
            if node not in offer.replicas and node != offer.owner:
                self.out.send(node, m.Replicate(offer))
        if self.members.me not in offer.replicas:
            self.core.forget(offer, now)

    def on_confirm(self, ev: m.ConfirmHandOver, now: float) -> None:
        for task_id, epoch in ev.committed:
            e = self.table.get(task_id)
            if e is not None and e.role is Role.PENDING and e.copy.epoch == epoch:
                self.adopt(e.copy, Change.CONFIRM, "handed over", now, skip=ev.sender)
        for task_id, epoch in ev.aborted:
            e = self.table.get(task_id)
            if e is not None and e.role is Role.PENDING and e.copy.epoch == epoch:
                self._abort(e.copy, now)

    def adopt(self, c: TaskCopy, change: Change, reason: str, now: float,
              skip: str | None = None) -> None:  # fmt: skip
        """A held offer becomes ours (confirmed, or its sender died after our ack)."""
        self.counters.received += 1
        self.counters.by_reason[reason] = self.counters.by_reason.get(reason, 0) + 1
        self.table.move(c, change, now)
        self.out.emit(m.RunLocally(c.task_id, c.record, reason))
        self.replicas.replicate(c, now, skip=skip)

    def _abort(self, c: TaskCopy, now: float) -> None:
        """An aborted offer: back to the replica we were (we never accept an offer
        for a task we own or run), or forget it, remembering the offer's version."""
        prev = self.pending[c.task_id].prev
        if prev is not None:
            self.table.move(prev, Change.ABORT, now)
        else:
            self.core.forget(c, now)

    def take_back(self, c: TaskCopy, now: float) -> None:
        """The offer expired (or its target died): ours again, at a higher epoch than
        the offer's, so a late ack from the target is answered with an abort."""
        offer = self.offers[c.task_id]
        reps = self.replicas.choose(c.task_id, self.members.me, c.replicas)
        self.counters.taken_back += 1
        back = c.with_owner(self.members.me, offer.epoch + 1, reps)
        self.core.own(back, Change.TAKE_BACK, "taken back")

    def offered_to(self, node: str) -> list[TaskCopy]:
        """Our copies of the tasks we offered to `node` (to take back if it is gone)."""
        out = []
        for task_id, offer in self.offers.items():
            e = self.table.get(task_id)
            if offer.owner == node and e is not None:
                out.append(e.copy)
        return out

    def fire(self, now: float) -> None:
        """Offers not acked in time are taken back; held offers are acked again."""
        for task_id in self.timers.due(now):
            e = self.table.get(task_id)
            if e is not None and e.role is Role.OFFERING:
                self.out.cause = f"timer: offer of {task_id} expired"
                self.take_back(e.copy, now)
            elif e is not None and e.role is Role.PENDING:
                self.out.cause = f"timer: confirm of {task_id} overdue"
                self.timers.arm(task_id, now + ACK_RETRY_S)
                sender = self.pending[task_id].sender
                self.out.send(sender, m.AckHandOver(((task_id, e.copy.epoch),)))

    def role_changed(self, task_id: str, role: Role | None) -> None:
        """Drop what the new role does not need (`Table.on_move`)."""
        if role is not Role.OFFERING:
            self.offers.pop(task_id, None)
        if role is not Role.PENDING:
            self.pending.pop(task_id, None)
        if role not in (Role.OFFERING, Role.PENDING):
            self.timers.cancel(task_id)

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def validate(self) -> None:
        for task_id, e in self.table.entries.items():
            assert (e.role is Role.OFFERING) == (task_id in self.offers), (task_id, e.role)
            assert (e.role is Role.PENDING) == (task_id in self.pending), (task_id, e.role)
            if e.role in (Role.OFFERING, Role.PENDING):
                assert self.timers.armed(task_id), f"{e.role} {task_id} has no timer"
        for task_id, offer in self.offers.items():
            c = self.table.entries[task_id].copy
            assert offer.owner != self.members.me and offer.epoch == c.epoch + 1, offer
        assert self.offers.keys() <= self.table.entries.keys()
        assert self.pending.keys() <= self.table.entries.keys()
