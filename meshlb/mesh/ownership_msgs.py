"""Events into and commands out of the task-ownership core (`meshlb.mesh.ownership`).

Events are past tense (what happened: a task was accepted, a copy arrived, a member
died); commands are verbs (what the driver must do: queue a task locally, send a
copy, hand tasks over). Node-to-node messages appear twice: as a command on the
sender (`HandOver`) and as an event on the receiver (`HandOverReceived`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshlb.mesh.placement import Candidate
from meshlb.mesh.replication import TaskCopy
from meshlb.mesh.stealing import Waiting
from meshlb.tasks.model import TaskRecord

TaskKey = tuple[str, int]
"""(task_id, epoch): names one offer of one task, so stale messages are detected."""

# ---------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TaskAccepted:
    """This node accepted a new task (202 sent). With `forward_to`, placement chose
    that peer: the task is replicated first, then offered to it."""

    record: TaskRecord
    forward_to: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicaReceived:
    copy: TaskCopy
    sender: str


@dataclass(frozen=True, slots=True)
class ReplicaAcked:
    """A replica holds revision (epoch, rev) of the task; for a final copy `run_id`
    names the run, and its first ack lets the owner record the result."""

    sender: str
    task_id: str
    epoch: int
    rev: int
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """The local scheduler started the task; `at` is the record's timestamp."""

    task_id: str
    at: float


@dataclass(frozen=True, slots=True)
class RunLost:
    """A local run ended without a result (backend busy, restart): queued again."""

    task_id: str


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A local run produced a final state (succeeded/failed/cancelled)."""

    task_id: str
    state: str
    at: float
    result: Any = None
    error: str | None = None
    error_status: int | None = None


@dataclass(frozen=True, slots=True)
class IdleNoticed:
    """This node has free slots and an empty queue; `peers` is the gossiped view."""

    free_slots: int
    local: Candidate
    peers: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class StealRequested:
    """Peer `by` asks for up to `n` tasks of `models`. The driver adds the local side:
    `waiting` (the local queue, head first) and this node's speed and slots."""

    by: str
    n: int
    models: frozenset[str]
    thief_tokens_per_s: float
    waiting: tuple[Waiting, ...]
    local_tokens_per_s: float
    local_slots: int


@dataclass(frozen=True, slots=True)
class StealDeclined:
    by: str


@dataclass(frozen=True, slots=True)
class HandOverReceived:
    """Phase 1 arrived here: `sender` offers these tasks (forwarded or stolen)."""

    sender: str
    copies: tuple[TaskCopy, ...]
    reason: str = "forward"


@dataclass(frozen=True, slots=True)
class HandOverAcked:
    """Phase 2 arrived at the old owner: the new owner will take these offers."""

    sender: str
    keys: tuple[TaskKey, ...]


@dataclass(frozen=True, slots=True)
class HandOverConfirmed:
    """Phase 3 arrived at the new owner: `committed` are ours now, `aborted` were
    taken back (the offer expired) and must be forgotten."""

    sender: str
    committed: tuple[TaskKey, ...]
    aborted: tuple[TaskKey, ...]


@dataclass(frozen=True, slots=True)
class PeerUp:
    """Gossip: a member is alive (new, or back from dead/left)."""

    node_id: str


@dataclass(frozen=True, slots=True)
class PeerDown:
    """Gossip: a member died or left."""

    node_id: str
    left: bool = False


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """A member came back with a new boot id (seen in its gossip metadata): it is
    live, but everything it owned before is gone and must be taken over."""

    node_id: str


@dataclass(frozen=True, slots=True)
class PeerSuspected:
    """Gossip: a member is suspected. It still owns its tasks, but it no longer
    counts towards the quorum that lets us decide results and take over."""

    node_id: str


@dataclass(frozen=True, slots=True)
class PeerChosen:
    """Placement chose peer `node_id` for a task this node owns but has not started
    (after `RunLocally` of a taken-over task whose model is not here, or that a peer
    would finish much sooner): hand it over instead of running it here."""

    task_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class ReachChecked:
    """Peer `sender` asks whether we can hear it (round `seq` of its majority check)."""

    sender: str
    seq: int


@dataclass(frozen=True, slots=True)
class ReachAnswered:
    """Peer `sender` answered our majority check `seq`; `down` is who is dead to it."""

    sender: str
    seq: int
    down: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PeerForgotten:
    """Gossip reaped a dead member: it no longer counts towards the quorum."""

    node_id: str


Event = (
    TaskAccepted | ReplicaReceived | ReplicaAcked | TaskStarted | RunLost | TaskFinished
    | IdleNoticed | StealRequested | StealDeclined | HandOverReceived | HandOverAcked
    | HandOverConfirmed | PeerUp | PeerDown | PeerRestarted | PeerSuspected | PeerForgotten
    | PeerChosen | ReachChecked | ReachAnswered
)  # fmt: skip

# -------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class RunLocally:
    """This node owns the task now: queue it in the local scheduler — or, if the model
    is not here or placement prefers a peer, feed `PeerChosen` instead."""

    task_id: str
    record: TaskRecord
    reason: str = "accepted"


@dataclass(frozen=True, slots=True)
class Unqueue:
    """Remove the task from the local scheduler if it is still queued (a newer owner
    or a final result exists elsewhere)."""

    task_id: str


@dataclass(frozen=True, slots=True)
class ReplicateTo:
    node_id: str
    copy: TaskCopy


@dataclass(frozen=True, slots=True)
class AckReplica:
    """Tell the owner we hold this revision of its copy (replication is acked and
    re-sent until acked, so a lost message never leaves a replica behind)."""

    to: str
    task_id: str
    epoch: int
    rev: int
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class CheckReach:
    """Majority check (`meshlb.mesh.fence`): ask `to` which members are dead to it."""

    to: str
    seq: int


@dataclass(frozen=True, slots=True)
class AnswerReach:
    to: str
    seq: int
    down: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class HandOver:
    """Phase 1: offer these tasks to `to`. Nothing to remove from the local queue
    here: stolen tasks come with an `Unqueue` each, forwarded ones were never queued."""

    to: str
    copies: tuple[TaskCopy, ...]
    reason: str = "forward"


@dataclass(frozen=True, slots=True)
class AckHandOver:
    to: str
    keys: tuple[TaskKey, ...]


@dataclass(frozen=True, slots=True)
class ConfirmHandOver:
    to: str
    committed: tuple[TaskKey, ...]
    aborted: tuple[TaskKey, ...]


@dataclass(frozen=True, slots=True)
class SendStealRequest:
    to: str
    n: int
    models: frozenset[str]
    tokens_per_s: float


@dataclass(frozen=True, slots=True)
class DeclineSteal:
    """The empty answer to a steal request, so the thief may ask elsewhere at once."""

    to: str


@dataclass(frozen=True, slots=True)
class RecordFinal:
    """Persist this final copy and wake waiters. `decided_here`: this node, as owner,
    decided the outcome (one run per task mesh-wide; the same run may be decided again
    by an heir that cannot know the dead owner already did); else a replica learned it."""

    copy: TaskCopy
    decided_here: bool


@dataclass(frozen=True, slots=True)
class DropDuplicateResult:
    """A second result for a task that is already final: dropped and counted."""

    task_id: str
    run_id: str
    kept_run_id: str | None = field(default=None)


Command = (
    RunLocally | Unqueue | ReplicateTo | AckReplica | HandOver | AckHandOver | ConfirmHandOver
    | SendStealRequest | DeclineSteal | RecordFinal | DropDuplicateResult | CheckReach
    | AnswerReach
)  # fmt: skip


def as_event(cmd: Command, sender: str) -> tuple[str, Event] | None:
    """The event a node-to-node command becomes on its receiver: (receiver, event).

    None for local commands (RunLocally, Unqueue, RecordFinal, DropDuplicateResult)
    and for `SendStealRequest`, whose event the receiving driver completes with its
    own queue (`StealRequested`)."""
    if isinstance(cmd, ReplicateTo):
        return cmd.node_id, ReplicaReceived(cmd.copy, sender)
    if isinstance(cmd, AckReplica):
        return cmd.to, ReplicaAcked(sender, cmd.task_id, cmd.epoch, cmd.rev, cmd.run_id)
    if isinstance(cmd, HandOver):
        return cmd.to, HandOverReceived(sender, cmd.copies, cmd.reason)
    if isinstance(cmd, AckHandOver):
        return cmd.to, HandOverAcked(sender, cmd.keys)
    if isinstance(cmd, ConfirmHandOver):
        return cmd.to, HandOverConfirmed(sender, cmd.committed, cmd.aborted)
    if isinstance(cmd, DeclineSteal):
        return cmd.to, StealDeclined(sender)
    if isinstance(cmd, CheckReach):
        return cmd.to, ReachChecked(sender, cmd.seq)
    if isinstance(cmd, AnswerReach):
        return cmd.to, ReachAnswered(sender, cmd.seq, cmd.down)
    return None
