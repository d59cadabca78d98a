"""The replica side of replication: merging a copy that arrived from a peer.

The merge rule is `replication.newer` (the higher version wins, then a final copy,
then the earlier result, then the higher revision). What a merge does besides
storing the winner: ack it (as a replica), tell a stale sender what we know, hand a
result we hold to the owner who may decide it, and stand down from an ownership
that a newer owner took over.
"""

from __future__ import annotations

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership.members import Members
from meshlb.mesh.ownership.results import Results
from meshlb.mesh.ownership.roles import Change, Entry, Role, Table
from meshlb.mesh.ownership.shared import Core, Outbox
from meshlb.mesh.replication import TaskCopy, conflicting_finals, newer


class Merge:
    """Merges incoming copies into this node's table."""

    def __init__(self, core: Core, table: Table, members: Members, results: Results,
                 out: Outbox) -> None:  # fmt: skip
        self.core, self.table, self.members, self.results, self.out = (
            core, table, members, results, out)  # fmt: skip

    def on_copy(self, ev: m.Replicate, now: float) -> None:
        """Merge a copy; ack it if we now hold exactly that revision as a replica."""
        self._merge(ev.copy, ev.sender, now)
        c = ev.copy
        e = self.table.get(c.task_id)
        if e is not None and e.role is Role.REPLICA and e.copy.version == c.version \
                and e.copy.rev == c.rev:  # fmt: skip
            self.out.send(ev.sender, m.AckReplica(c.task_id, c.epoch, c.rev, c.run_id))

    def _merge(self, c: TaskCopy, sender: str, now: float) -> None:
        me = self.members.me
        e = self.table.get(c.task_id)
        if e is None:
            if self.table.overtaken(c):
                return  # older than what made us drop it: overtaken by a newer message
            if me in c.replicas or c.owner == me:
                self.table.move(c, Change.LEARN, now)
                if c.final:
                    self.results.learned(c, now)
            else:
                self.core.forget(c, now)
            return
        if e.role is Role.OWNER and not e.copy.final and c.final:
            self.results.decide(e, c, now)  # a result proposed by a non-owner: first wins
            return
        if conflicting_finals(c, e.copy):
            loser = e.copy if newer(c, e.copy) else c
            self.results.drop(c.task_id, loser.run_id or "", None)
        if newer(c, e.copy):
            self._supersede(e, c, sender, now)
        elif e.copy.version > c.version or (e.copy.final and not c.final):
            self.out.send(sender, m.Replicate(e.copy))  # a stale holder: tell it

    def _supersede(self, e: Entry, c: TaskCopy, sender: str, now: float) -> None:
        """A newer copy (a result, or a higher owner version) replaces ours. A result
        we held is proposed to the new owner, or dropped if it already has one."""
        me, old, live = self.members.me, e.copy, self.members.live
        task_id = c.task_id
        if old.final and not c.final:  # our result predates the newer owner: propose it
            if c.owner != me:
                self.out.send(c.owner, m.Replicate(old))
            self.table.move(old, Change.SUPERSEDE, now)
            return
        if e.role in (Role.OWNER, Role.OFFERING):  # we owned it: our replicas must hear too
            if task_id not in self.table.running and not old.final:
                self.out.emit(m.Unqueue(task_id))
            for node in old.replicas:
                if node != c.owner and node not in c.replicas and node != sender:
                    self.out.send(node, m.Replicate(c))
        held = self.results.held.get(task_id)
        if c.owner == me and c.final:
            self.table.move(c, Change.RESULT, now)
        elif me in c.replicas or c.owner == me or c.final:
            self.table.move(c, Change.SUPERSEDE, now)
        elif held is not None and c.owner not in live:
            # A result we hold for a task whose new owner we cannot reach yet (healed
            # partitions re-learn members in any order): keep it, to propose it when
            # that owner is back (`TakeOvers.on_up`), so the first result can still win.
            self.table.move(c, Change.SUPERSEDE, now)
            return
        else:
            self.core.forget(c, now)
        # what we hold now (forgotten: our old copy, which the held result was run on)
        view = self.table.get(task_id) or e
        if c.final and not old.final:
            dropped = self.results.run_id(view) if held is not None else None
            self.results.learned(c, now, dropped)
        elif held is not None and c.owner != me and c.owner in live:
            self.out.send(c.owner, m.Replicate(self.results.final_copy(view, held)))
