"""What this node is for each task it knows (its role), and how a role may change.

Roles:

* OWNER: the task is queued or running here (or final, decided here); we replicate it.
* OFFERING: we own it but have offered it to a peer (hand-over phase 1); not queued.
* PENDING: a peer offered it to us and we acked (phase 2); not queued until confirmed.
* REPLICA: we hold a copy for its owner; we take over if the owner dies.
* no entry (`None`): we do not know the task, or forgot it (a tombstone remembers
  the version that made us forget it).

The role changes only through `TRANSITIONS`, a declarative table keyed by (role,
change) as h11's `_state.py` keys connection states by (state, event); anything not
in it raises `IllegalTransition`, so a bug shows up as an error at the step that
made it, not as a task run twice much later.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from meshlb.mesh.replication import TaskCopy, Version


class Role(enum.StrEnum):
    OWNER = "owner"
    OFFERING = "offering"
    PENDING = "pending"
    REPLICA = "replica"


class Change(enum.Enum):
    """Why a role changes (the stimulus, as the transition table names it)."""

    ACCEPT = "accept"  # a client's task accepted here
    LEARN = "learn"  # a copy arrived for a task we did not hold
    OFFER = "offer"  # we offer our task to a peer (forward, steal, replace)
    HOLD_OFFER = "hold offer"  # a peer's offer held, acked, not queued yet
    COMMIT = "commit"  # our offer was acked while open: the peer owns it
    TAKE_BACK = "take back"  # our offer expired or its target died
    CONFIRM = "confirm"  # the offerer confirmed: ours now
    ADOPT = "adopt"  # the offerer died after our ack: ours now
    ABORT = "abort"  # the offerer took it back: the copy we had before
    TAKE_OVER = "take over"  # its owner is gone and we are the heir
    SUPERSEDE = "supersede"  # a newer copy (a newer owner, or a result) replaces ours
    RESULT = "result"  # a final copy of our own version: still the owner
    FORGET = "forget"  # not a holder any more (a tombstone remains)


OWN, OFF, PEN, REP = Role.OWNER, Role.OFFERING, Role.PENDING, Role.REPLICA
TRANSITIONS: dict[tuple[Role | None, Change], Role | None] = {
    (None, Change.ACCEPT): OWN,
    (None, Change.LEARN): REP,
    (None, Change.HOLD_OFFER): PEN,
    (REP, Change.HOLD_OFFER): PEN,
    (PEN, Change.HOLD_OFFER): PEN,  # a newer offer for a task we hold an offer of
    (OWN, Change.OFFER): OFF,
    (OFF, Change.COMMIT): REP,
    (OFF, Change.TAKE_BACK): OWN,
    (PEN, Change.CONFIRM): OWN,
    (PEN, Change.ADOPT): OWN,
    (PEN, Change.ABORT): REP,
    (REP, Change.TAKE_OVER): OWN,
    (OWN, Change.SUPERSEDE): REP,
    (OFF, Change.SUPERSEDE): REP,
    (PEN, Change.SUPERSEDE): REP,
    (REP, Change.SUPERSEDE): REP,
    (OWN, Change.RESULT): OWN,
    (OFF, Change.RESULT): OWN,
    (PEN, Change.RESULT): OWN,
    (REP, Change.RESULT): OWN,
    (OWN, Change.FORGET): None,
    (OFF, Change.FORGET): None,
    (PEN, Change.FORGET): None,
    (REP, Change.FORGET): None,
    (None, Change.FORGET): None,  # a copy we were never a holder of: a tombstone only
}


class IllegalTransition(RuntimeError):
    """A role change the table does not allow: a bug in the core."""


def next_role(role: Role | None, change: Change) -> Role | None:
    try:
        return TRANSITIONS[(role, change)]
    except KeyError:
        raise IllegalTransition(f"{change.value} is not allowed from {role}") from None


@dataclass(frozen=True, slots=True)
class Entry:
    """One task as this node holds it. `copy` is the authoritative copy for OWNER and
    REPLICA; OFFERING keeps our copy (the offer is the hand-over machine's); PENDING
    holds the offered copy."""

    copy: TaskCopy
    role: Role


class Table:
    """The entries and tombstones of one node. Every role change goes through `move`,
    which then tells each machine (`on_move`), so each drops the state the new role
    does not need — no machine has to know which others keep state per task."""

    def __init__(self, tombstone_s: float) -> None:
        self.tombstone_s = tombstone_s
        self.on_move: list[Callable[[str, Role | None], None]] = []
        self.entries: dict[str, Entry] = {}
        self.running: set[str] = set()  # started here and not ended (any role)
        self._tombs: dict[str, tuple[Version, int]] = {}  # task id -> (version, rev)
        self._tomb_order: deque[tuple[float, str]] = deque()  # (forget_at, task id)

    def get(self, task_id: str) -> Entry | None:
        return self.entries.get(task_id)

    def role(self, task_id: str) -> Role | None:
        e = self.entries.get(task_id)
        return None if e is None else e.role

    def move(self, c: TaskCopy, change: Change, now: float) -> Role | None:
        """Apply `change` to the task of `c`, storing `c` (or, if the table says so,
        forgetting the task behind a tombstone of `c`'s version). Returns the new role."""
        role = next_role(self.role(c.task_id), change)
        if role is None:
            self.entries.pop(c.task_id, None)
            self.running.discard(c.task_id)
            self._tombs[c.task_id] = (c.version, c.rev)
            self._tomb_order.append((now + self.tombstone_s, c.task_id))
        else:
            self.entries[c.task_id] = Entry(c, role)
        for listener in self.on_move:
            listener(c.task_id, role)
        return role

    def update(self, c: TaskCopy) -> None:
        """A new revision of a held task, same role."""
        e = self.entries[c.task_id]
        self.entries[c.task_id] = Entry(c, e.role)

    def overtaken(self, c: TaskCopy) -> bool:
        """Is `c` no newer than the copy that made us forget its task? (messages
        overtake each other: an older copy arriving late is no new assignment)."""
        tomb = self._tombs.get(c.task_id)
        return tomb is not None and (c.version, c.rev) <= tomb

    def expire_tombs(self, now: float) -> None:
        """Lazily, at each tick (a stale tombstone costs nothing, so it sets no deadline)."""
        while self._tomb_order and self._tomb_order[0][0] <= now:
            self._tombs.pop(self._tomb_order.popleft()[1], None)

    def validate(self, me: str) -> None:
        for task_id, e in self.entries.items():
            assert e.copy.task_id == task_id, (task_id, e)
            if e.role is not Role.REPLICA:
                assert e.copy.owner == me, f"{e.role} {task_id} owned by {e.copy.owner}"
        assert self.running <= self.entries.keys(), self.running - self.entries.keys()
