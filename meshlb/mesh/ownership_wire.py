"""The node-to-node messages of the task-ownership protocol, as msgpack.

Nodes send each other the network commands of `meshlb.mesh.ownership` (replicate a
copy, hand tasks over, ack, check reach, ask to steal) in the body of an HTTP POST;
this module turns a batch of them into bytes and the bytes back into the events the
receiver feeds its own core. Nothing more is needed for reliability: the ownership
core resends until acked, so a lost or refused batch is harmless. The envelope names
the sender (and its boot id, so a restarted peer's stale messages can be told apart);
it is trusted because the cluster-key HMAC on the HTTP request authenticates it.

Decoding trusts nothing else: every field is type-checked (strictly: no bool for an
int, no bytes for a str), task states must be known, JSON-like values (`request`,
`result`, `extra`) may hold only dict/list/str/int/float/bool/None, and any failure
is one `WireError` whose text says what was wrong. Unknown keys are ignored, so a
newer node may add fields without a version bump; removing one needs `v` bumped.

Wire shape: `{"v": 1, "s": sender, "b": boot, "i": [item, ...]}`, each item a map
`{"t": tag, ...}` with short keys; tuples and sets travel as arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeGuard

import msgpack
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.replication import TaskCopy
from meshlb.tasks.model import TaskRecord

VERSION = 1
MAX_BATCH_BYTES = 64 * 1024 * 1024  # results can be large Ollama responses


class WireError(Exception):
    """Anything malformed; str(e) is a human sentence saying what."""


@dataclass(frozen=True, slots=True)
class StealAsk:
    """A `SendStealRequest` as its receiver sees it; the receiving driver completes it
    into `StealRequested` with its own queue, speed and slots."""

    by: str
    n: int
    models: frozenset[str]
    tokens_per_s: float


@dataclass(frozen=True, slots=True)
class Batch:
    sender: str  # node id of the sender
    boot: str  # the sender's boot id (random per process start)
    items: tuple[m.Event | StealAsk, ...]  # receiver-side events, in sending order


NetworkCommand = (
    m.ReplicateTo | m.AckReplica | m.HandOver | m.AckHandOver | m.ConfirmHandOver
    | m.DeclineSteal | m.CheckReach | m.AnswerReach | m.SendStealRequest
)  # fmt: skip


def is_network_command(cmd: m.Command) -> TypeGuard[NetworkCommand]:
    """True for the commands that travel to another node (the rest are local)."""
    return isinstance(cmd, NetworkCommand)


def destination(cmd: NetworkCommand) -> str:
    """The node id the command goes to."""
    return cmd.node_id if isinstance(cmd, m.ReplicateTo) else cmd.to


# ---------------------------------------------------------------------- encoding


def _copy(c: TaskCopy) -> dict[str, Any]:
    record = {alias: getattr(c.record, name) for name, alias in _RECORD_KEYS}
    return {"r": record, "o": c.owner, "e": c.epoch, "rs": c.replicas,
            "f": sorted(c.former), "u": c.run_id, "v": c.rev}  # fmt: skip


def _item(cmd: NetworkCommand) -> dict[str, Any]:
    if isinstance(cmd, m.ReplicateTo):
        return {"t": "rep", "c": _copy(cmd.copy)}
    if isinstance(cmd, m.AckReplica):
        return {"t": "ack", "id": cmd.task_id, "e": cmd.epoch, "v": cmd.rev, "u": cmd.run_id}
    if isinstance(cmd, m.HandOver):
        return {"t": "ho", "c": [_copy(c) for c in cmd.copies], "why": cmd.reason}
    if isinstance(cmd, m.AckHandOver):
        return {"t": "hoa", "k": cmd.keys}
    if isinstance(cmd, m.ConfirmHandOver):
        return {"t": "hoc", "ok": cmd.committed, "ab": cmd.aborted}
    if isinstance(cmd, m.DeclineSteal):
        return {"t": "nosteal"}
    if isinstance(cmd, m.CheckReach):
        return {"t": "chk", "q": cmd.seq}
    if isinstance(cmd, m.AnswerReach):
        return {"t": "ans", "q": cmd.seq, "d": sorted(cmd.down)}
    if isinstance(cmd, m.SendStealRequest):
        return {"t": "steal", "n": cmd.n, "ms": sorted(cmd.models), "tps": cmd.tokens_per_s}
    raise TypeError(f"{type(cmd).__name__} is not a node-to-node command")


def encode_batch(sender: str, boot: str, cmds: Sequence[NetworkCommand]) -> bytes:
    """One POST body. The receiver refuses bodies over MAX_BATCH_BYTES, so a sender
    with more to say splits it over several batches."""
    body = {"v": VERSION, "s": sender, "b": boot, "i": [_item(c) for c in cmds]}
    return bytes(msgpack.packb(body, use_bin_type=True))


# ---------------------------------------------------------------------- decoding

_SCALARS = (str, int, float, bool, type(None))


def _json(value: Any) -> Any:
    """Reject anything JSON could not carry (bytes, msgpack ext types, non-str keys).
    Iterative, so depth costs no recursion; msgpack already refuses ~1000 levels."""
    todo = [value]
    while todo:
        v = todo.pop()
        if type(v) is dict:
            if any(type(k) is not str for k in v):
                raise ValueError("map keys in a JSON value must be strings")
            todo.extend(v.values())
        elif type(v) is list:
            todo.extend(v)
        elif type(v) not in _SCALARS:
            raise ValueError(f"{type(v).__name__} is not a JSON value")
    return value


Text = Annotated[str, Strict()]
NodeId = Annotated[str, Strict(), Field(min_length=1)]
Int = Annotated[int, Strict()]
Count = Annotated[int, Strict(), Field(ge=0)]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # ints are accepted
Json = Annotated[Any, AfterValidator(_json)]
JsonObject = Annotated[dict[Text, Any], AfterValidator(_json)]
Key = tuple[Text, Count]  # (task_id, epoch)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _RecordWire(_Wire):
    """Field names are TaskRecord's (so it builds with `**`), aliases are the wire keys."""

    id: Text = Field(alias="id")
    kind: Text = Field(alias="k")
    model: Text = Field(alias="m")
    request: JsonObject = Field(alias="q")
    priority: Int = Field(alias="p")
    origin: Text = Field(alias="o")
    created_at: Number = Field(alias="ca")
    timeout_s: Number | None = Field(alias="to")
    idempotency_key: Text | None = Field(alias="ik")
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"] = Field(alias="st")
    node: Text | None = Field(alias="n")
    attempts: Count = Field(alias="at")
    started_at: Number | None = Field(alias="sa")
    finished_at: Number | None = Field(alias="fa")
    result: Json = Field(alias="r")
    error: Text | None = Field(alias="er")
    error_status: Int | None = Field(alias="es")
    est_tokens: Count = Field(alias="et")
    extra: JsonObject = Field(alias="x")

    def build(self) -> TaskRecord:
        return TaskRecord(**dict(self))


_RECORD_KEYS = tuple((name, f.alias or name) for name, f in _RecordWire.model_fields.items())


class _CopyWire(_Wire):
    r: _RecordWire
    o: NodeId
    e: Count
    rs: tuple[NodeId, ...]
    f: frozenset[NodeId]
    u: Text | None
    v: Count

    def build(self) -> TaskCopy:
        return TaskCopy(self.r.build(), self.o, self.e, self.rs, self.f, self.u, self.v)


class _Replicate(_Wire):
    c: _CopyWire


class _AckReplica(_Wire):
    id: Text
    e: Count
    v: Count
    u: Text | None


class _HandOver(_Wire):
    c: tuple[_CopyWire, ...]
    why: Text


class _AckHandOver(_Wire):
    k: tuple[Key, ...]


class _ConfirmHandOver(_Wire):
    ok: tuple[Key, ...]
    ab: tuple[Key, ...]


class _CheckReach(_Wire):
    q: Count


class _AnswerReach(_Wire):
    q: Count
    d: frozenset[NodeId]


class _Steal(_Wire):
    n: Count
    ms: frozenset[Text]
    tps: Annotated[Number, Field(ge=0)]


# tag -> (wire model, what the item becomes on the receiver given the sender); as_event
_ITEMS: dict[str, tuple[type[_Wire], Callable[[Any, str], m.Event | StealAsk]]] = {
    "rep": (_Replicate, lambda w, s: m.ReplicaReceived(w.c.build(), s)),
    "ack": (_AckReplica, lambda w, s: m.ReplicaAcked(s, w.id, w.e, w.v, w.u)),
    "ho": (_HandOver, lambda w, s: m.HandOverReceived(s, tuple(c.build() for c in w.c), w.why)),
    "hoa": (_AckHandOver, lambda w, s: m.HandOverAcked(s, w.k)),
    "hoc": (_ConfirmHandOver, lambda w, s: m.HandOverConfirmed(s, w.ok, w.ab)),
    "nosteal": (_Wire, lambda w, s: m.StealDeclined(s)),
    "chk": (_CheckReach, lambda w, s: m.ReachChecked(s, w.q)),
    "ans": (_AnswerReach, lambda w, s: m.ReachAnswered(s, w.q, w.d)),
    "steal": (_Steal, lambda w, s: StealAsk(s, w.n, w.ms, w.tps)),
}


class _Envelope(_Wire):
    s: NodeId
    b: Annotated[str, Strict(), Field(min_length=1)]
    i: Annotated[list[Any], Strict()]


def _why(e: ValidationError) -> str:
    """The first problem as `path.of.wire.keys: message` (one is enough to say what)."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def decode_batch(body: bytes) -> Batch:
    """The sender and the events of one POST body; raises only WireError."""
    if len(body) > MAX_BATCH_BYTES:
        raise WireError(f"batch of {len(body)} bytes is over the {MAX_BATCH_BYTES}-byte limit")
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises many types on garbage; all mean "malformed"
        raise WireError(f"batch is not valid msgpack ({type(e).__name__})") from None
    if type(raw) is not dict:
        raise WireError(f"batch is a {type(raw).__name__}, not a map")
    version = raw.get("v")
    if type(version) is not int or version != VERSION:
        raise WireError(f"batch has version {version!r:.40}, this node reads {VERSION}")
    try:
        env = _Envelope.model_validate(raw)
    except ValidationError as e:
        raise WireError(f"batch envelope is malformed: {_why(e)}") from None
    items: list[m.Event | StealAsk] = []
    for n, item in enumerate(env.i):
        tag = item.get("t") if type(item) is dict else None
        if type(tag) is not str or tag not in _ITEMS:
            raise WireError(f"item {n} has no known type tag (got {tag!r:.40})")
        model, event = _ITEMS[tag]
        try:
            items.append(event(model.model_validate(item), env.s))
        except ValidationError as e:
            raise WireError(f"item {n} ({tag!r}) is malformed: {_why(e)}") from None
    return Batch(env.s, env.b, tuple(items))
