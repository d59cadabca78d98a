"""Events into, commands out of, and messages between task-ownership cores.

Three kinds, each type defined once:

* Local events (past tense): what this node's task service, gossip or placement saw.
* Local commands (verbs): what the driver must do here (queue, unqueue, record).
* Messages: what one core tells another. The sending core emits `Send(to, msg)`;
  the receiving core is fed `msg` itself; the wire codec (`ownership_wire`) is
  derived from the message's fields (their `wire` metadata names the short key).
  `sender` is stamped by the sender's outbox and, on the wire, comes from the batch
  envelope (which the cluster-key HMAC authenticates), never from the item.

Everything carries `cause`: the stimulus it came from ("TaskAccepted t-1",
"PeerDown b", "timer: offer of t-1 expired"), so a log line can say why. Events fed
from outside default to their source; the core stamps everything it emits, and a
message's cause travels with it, so the receiver can log why the sender sent it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from meshlb.mesh.placement import Candidate
from meshlb.mesh.replication import TaskCopy
from meshlb.mesh.stealing import Waiting
from meshlb.tasks.model import TaskRecord

TaskKey = tuple[str, int]
"""(task_id, epoch): names one offer of one task, so stale messages are detected."""


def _cause(source: str) -> Any:
    return field(default=source, kw_only=True, metadata={"wire": "y", "optional": True})


# ---------------------------------------------------------------------- local events


@dataclass(frozen=True, slots=True)
class TaskAccepted:
    """This node accepted a new task (202 sent). With `forward_to`, placement chose
    that peer: the task is replicated first, then offered to it."""

    record: TaskRecord
    forward_to: str | None = None
    cause: str = _cause("client")


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """The local scheduler started the task; `at` is the record's timestamp."""

    task_id: str
    at: float
    cause: str = _cause("scheduler")


@dataclass(frozen=True, slots=True)
class RunLost:
    """A local run ended without a result (backend busy, restart): queued again."""

    task_id: str
    cause: str = _cause("worker")


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A local run produced a final state (succeeded/failed/cancelled)."""

    task_id: str
    state: str
    at: float
    result: Any = None
    error: str | None = None
    error_status: int | None = None
    cause: str = _cause("worker")


@dataclass(frozen=True, slots=True)
class IdleNoticed:
    """This node has free slots and an empty queue; `peers` is the gossiped view."""

    free_slots: int
    local: Candidate
    peers: tuple[Candidate, ...]
    cause: str = _cause("idle check")


@dataclass(frozen=True, slots=True)
class StealRequested:
    """Peer `by` asks for up to `n` tasks of `models` (its `StealAsk`), completed by
    the driver with the local side: `waiting` (the local queue, head first) and this
    node's speed and slots."""

    by: str
    n: int
    models: frozenset[str]
    thief_tokens_per_s: float
    waiting: tuple[Waiting, ...]
    local_tokens_per_s: float
    local_slots: int
    cause: str = _cause("steal request")


@dataclass(frozen=True, slots=True)
class PeerUp:
    """Gossip: a member is alive (new, or back from dead/left)."""

    node_id: str
    cause: str = _cause("gossip")


@dataclass(frozen=True, slots=True)
class PeerDown:
    """Gossip: a member died or left."""

    node_id: str
    left: bool = False
    cause: str = _cause("gossip")


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """A member came back with a new boot id (seen in its gossip metadata): it is
    live, but everything it owned before is gone and must be taken over."""

    node_id: str
    cause: str = _cause("gossip")


@dataclass(frozen=True, slots=True)
class PeerSuspected:
    """Gossip: a member is suspected. It still owns its tasks, but it no longer
    counts towards the quorum that lets us decide results and take over."""

    node_id: str
    cause: str = _cause("gossip")


@dataclass(frozen=True, slots=True)
class PeerForgotten:
    """Gossip reaped a dead member: it no longer counts towards the quorum."""

    node_id: str
    cause: str = _cause("gossip")


@dataclass(frozen=True, slots=True)
class PeerChosen:
    """Placement chose peer `node_id` for a task this node owns but has not started
    (after `RunLocally` of a taken-over task whose model is not here, or that a peer
    would finish much sooner): hand it over instead of running it here."""

    task_id: str
    node_id: str
    cause: str = _cause("placement")


# ---------------------------------------------------------------------- messages


def _sender() -> Any:
    return field(default="", kw_only=True, metadata={"wire": None})


@dataclass(frozen=True, slots=True)
class Replicate:
    """A copy of a task for one of its holders (replication is acked and re-sent
    until acked, so a lost message never leaves a replica behind)."""

    TAG: ClassVar[str] = "rep"
    copy: TaskCopy = field(metadata={"wire": "c"})
    sender: str = _sender()
    cause: str = _cause("")


@dataclass(frozen=True, slots=True)
class AckReplica:
    """The replica holds revision (epoch, rev) of the owner's copy; for a final copy
    `run_id` names the run, and its first ack lets the owner record the result."""

    TAG: ClassVar[str] = "ack"
    task_id: str = field(metadata={"wire": "id"})
    epoch: int = field(metadata={"wire": "e", "ge": 0})
    rev: int = field(metadata={"wire": "v", "ge": 0})
    run_id: str | None = field(default=None, metadata={"wire": "u"})
    sender: str = _sender()
    cause: str = _cause("")


@dataclass(frozen=True, slots=True)
class HandOver:
    """Phase 1 (`ownership.handover`): these tasks are offered to the receiver
    (`reason`: forward, steal, replace). Stolen tasks were unqueued by an `Unqueue`
    each; forwarded ones were never queued."""

    TAG: ClassVar[str] = "ho"
    copies: tuple[TaskCopy, ...] = field(metadata={"wire": "c"})
    reason: str = field(default="forward", metadata={"wire": "why"})
    sender: str = _sender()
    cause: str = _cause("")


@dataclass(frozen=True, slots=True)
class AckHandOver:
    """Phase 2: the new owner holds these offers (not queued yet) and will take them."""

    TAG: ClassVar[str] = "hoa"
    keys: tuple[TaskKey, ...] = field(metadata={"wire": "k", "ge": 0})
    sender: str = _sender()
    cause: str = _cause("")


@dataclass(frozen=True, slots=True)
class ConfirmHandOver:
    """Phase 3: `committed` belong to the receiver now; `aborted` were taken back
    (the offer expired) and must be forgotten."""

    TAG: ClassVar[str] = "hoc"
    committed: tuple[TaskKey, ...] = field(metadata={"wire": "ok", "ge": 0})
    aborted: tuple[TaskKey, ...] = field(metadata={"wire": "ab", "ge": 0})
    sender: str = _sender()
    cause: str = _cause("")


@dataclass(frozen=True, slots=True)
class StealAsk:
    """An idle node asks for up to `n` queued tasks of `models`; its receiver's
    driver completes it into `StealRequested` with its own queue, speed and slots."""

    TAG: ClassVar[str] = "steal"
    n: int = field(metadata={"wire": "n", "ge": 0})
    models: frozenset[str] = field(metadata={"wire": "ms"})
    tokens_per_s: float = field(metadata={"wire": "tps", "ge": 0})
    sender: str = _sender()
    cause: str = _cause("")


@dataclass(frozen=True, slots=True)
class DeclineSteal:
    """The empty answer to a steal request, so the thief may ask elsewhere at once."""

    TAG: ClassVar[str] = "nosteal"
    sender: str = _sender()
    cause: str = _cause("")


@dataclass(frozen=True, slots=True)
class CheckReach:
    """Majority check (`ownership.fence`): which members are dead to the receiver?"""

    TAG: ClassVar[str] = "chk"
    seq: int = field(metadata={"wire": "q", "ge": 0})
    sender: str = _sender()
    cause: str = _cause("")


@dataclass(frozen=True, slots=True)
class AnswerReach:
    """The answer to check `seq`: `down` is who is dead to the sender."""

    TAG: ClassVar[str] = "ans"
    seq: int = field(metadata={"wire": "q", "ge": 0})
    down: frozenset[str] = field(default=frozenset(), metadata={"wire": "d", "nonempty": True})
    sender: str = _sender()
    cause: str = _cause("")


Message = (
    Replicate | AckReplica | HandOver | AckHandOver | ConfirmHandOver | StealAsk
    | DeclineSteal | CheckReach | AnswerReach
)  # fmt: skip
MESSAGES: tuple[type[Message], ...] = (
    Replicate, AckReplica, HandOver, AckHandOver, ConfirmHandOver, StealAsk, DeclineSteal,
    CheckReach, AnswerReach,
)  # fmt: skip

LocalEvent = (
    TaskAccepted | TaskStarted | RunLost | TaskFinished | IdleNoticed | StealRequested
    | PeerUp | PeerDown | PeerRestarted | PeerSuspected | PeerForgotten | PeerChosen
)  # fmt: skip
Event = LocalEvent | Message

# ---------------------------------------------------------------------- local commands


@dataclass(frozen=True, slots=True)
class RunLocally:
    """This node owns the task now: queue it in the local scheduler — or, if the model
    is not here or placement prefers a peer, feed `PeerChosen` instead."""

    task_id: str
    record: TaskRecord
    reason: str = "accepted"
    cause: str = field(default="", kw_only=True)


@dataclass(frozen=True, slots=True)
class Unqueue:
    """Remove the task from the local scheduler if it is still queued (a newer owner
    or a final result exists elsewhere)."""

    task_id: str
    cause: str = field(default="", kw_only=True)


@dataclass(frozen=True, slots=True)
class RecordFinal:
    """Persist this final copy and wake waiters. `decided_here`: this node, as owner,
    decided the outcome (one run per task mesh-wide; the same run may be decided again
    by an heir that cannot know the dead owner already did); else a replica learned it."""

    copy: TaskCopy
    decided_here: bool
    cause: str = field(default="", kw_only=True)


@dataclass(frozen=True, slots=True)
class DropDuplicateResult:
    """A second result for a task that is already final: dropped and counted."""

    task_id: str
    run_id: str
    kept_run_id: str | None = None
    cause: str = field(default="", kw_only=True)


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver `msg` to node `to` (fire and forget: the core re-sends until acked)."""

    to: str
    msg: Message

    @property
    def cause(self) -> str:
        return self.msg.cause


Command = RunLocally | Unqueue | RecordFinal | DropDuplicateResult | Send


def stimulus(ev: Event) -> str:
    """A short name for an event, stamped as the cause of what it makes the core do:
    its type and whom it is about (never the event's own cause, so causes do not
    nest as messages bounce between nodes)."""
    name = type(ev).__name__
    if isinstance(ev, TaskAccepted):
        return f"{name} {ev.record.id}"
    subject = getattr(ev, "task_id", None) or getattr(ev, "node_id", None)
    if subject is None and isinstance(ev, Replicate):
        subject = ev.copy.task_id
    sender = getattr(ev, "sender", None) or getattr(ev, "by", None)
    return " ".join(p for p in (name, subject, f"from {sender}" if sender else None) if p)
