"""The node-to-node messages of the task-ownership protocol, as msgpack.

Nodes send each other the ownership core's messages (`ownership_msgs.MESSAGES`:
replicate a copy, hand tasks over, ack, check reach, ask to steal) in the body of an
HTTP POST; this module turns a batch of `Send` commands into bytes and the bytes
back into the messages the receiver feeds its own core. Nothing more is needed for
reliability: the core resends until acked, so a lost or refused batch is harmless.
The envelope names the sender (and its boot id, so a restarted peer's stale messages
can be told apart); it is trusted because the cluster-key HMAC on the HTTP request
authenticates it, and it is the `sender` of every message in the batch.

The codec is derived from the dataclasses, not written per message: each field's
`wire` metadata is its short key (`None`: not sent), and its type says how to check
it, with a few constraints from the metadata (`ge`, `nonempty`, `one_of`). Decoding
trusts nothing: every field is type-checked strictly (no bool for an int, no bytes
for a str, finite floats only), JSON-like values (`request`, `result`, `extra`) may
hold only dict/list/str/int/float/bool/None, and any failure is one `WireError`
whose text says what was wrong. Unknown keys are ignored, so a newer node may add
fields without a version bump if they are `optional` (as `cause` was); removing
one needs `v` bumped.

Wire shape: `{"v": 1, "s": sender, "b": boot, "i": [item, ...]}`, each item a map
`{"t": tag, ...}` with short keys; tuples and sets travel as arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin, get_type_hints

import msgpack
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
)

from meshlb.mesh import ownership_msgs as m

VERSION = 1
MAX_BATCH_BYTES = 64 * 1024 * 1024  # results can be large Ollama responses

TAGS: dict[str, type[m.Message]] = {cls.TAG: cls for cls in m.MESSAGES}
NetworkCommand = m.Send


class WireError(Exception):
    """Anything malformed; str(e) is a human sentence saying what."""


@dataclass(frozen=True, slots=True)
class Batch:
    sender: str  # node id of the sender
    boot: str  # the sender's boot id (random per process start)
    items: tuple[m.Message, ...]  # in sending order, each with `sender` set


def is_network_command(cmd: m.Command) -> TypeGuard[m.Send]:
    """True for the commands that travel to another node (the rest are local)."""
    return isinstance(cmd, m.Send)


def destination(cmd: m.Send) -> str:
    """The node id the command goes to."""
    return cmd.to


# ---------------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    key: str
    hint: Any
    meta: Mapping[str, Any]
    default: Any


@functools.cache
def _fields(cls: type) -> tuple[_Field, ...]:
    """The wire fields of a dataclass, from its `wire` metadata."""
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "wire" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no wire key")
        if f.metadata["wire"] is not None:
            out.append(_Field(f.name, f.metadata["wire"], hints[f.name], f.metadata, f.default))
    return tuple(out)


# ---------------------------------------------------------------------- encoding


Encoder = Callable[[Any], Any]


def _value_encoder(hint: Any) -> Encoder | None:
    """How to turn a value of `hint` into msgpack (None: as it is)."""
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _encoder(hint)
    if origin is frozenset:
        return sorted
    if origin is tuple:
        inner = [_value_encoder(a) for a in args if a is not Ellipsis]
        each = inner[0] if inner and all(e is inner[0] for e in inner) else None
        if each is None and any(inner):
            raise TypeError(f"no wire form for {hint!r}")
        return list if each is None else (lambda v: [each(x) for x in v])
    if origin in (Union, types.UnionType) and any(_value_encoder(a) for a in args):
        raise TypeError(f"no wire form for {hint!r}")  # only scalars may be optional
    return None


@functools.cache
def _encoder(cls: type) -> Encoder:
    """The encoder of a dataclass, built once from its fields: a map of short keys."""
    plan = [(f.key, f.name, _value_encoder(f.hint)) for f in _fields(cls)]

    def encode(value: Any) -> dict[str, Any]:
        out = {}
        for key, name, enc in plan:
            v = getattr(value, name)
            out[key] = v if enc is None or v is None else enc(v)
        return out

    return encode


def encode_batch(sender: str, boot: str, cmds: Sequence[m.Send]) -> bytes:
    """One POST body. The receiver refuses bodies over MAX_BATCH_BYTES, so a sender
    with more to say splits it over several batches."""
    items = []
    for cmd in cmds:
        if not isinstance(cmd, m.Send):
            raise TypeError(f"{type(cmd).__name__} is not a node-to-node command")
        cls: type = type(cmd.msg)
        items.append({"t": cmd.msg.TAG, **_encoder(cls)(cmd.msg)})
    body = {"v": VERSION, "s": sender, "b": boot, "i": items}
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


Json = Annotated[Any, AfterValidator(_json)]
JsonObject = Annotated[dict[Annotated[str, Strict()], Any], AfterValidator(_json)]


def _checked(hint: Any, meta: Mapping[str, Any]) -> Any:
    """The pydantic type that checks a value of `hint` strictly (constraints from
    `meta` apply to every scalar of their kind inside, e.g. each int of a key)."""
    ge = {"ge": meta["ge"]} if "ge" in meta else {}
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return Json
    if hint is str and "one_of" in meta:
        return Literal[tuple(meta["one_of"])]
    if hint is str:
        return Annotated[str, Strict(), Field(min_length=1 if meta.get("nonempty") else 0)]
    if hint is bool:
        return Annotated[bool, Strict()]
    if hint is int:
        return Annotated[int, Strict(), Field(**ge)]
    if hint is float:  # ints are accepted (msgpack packs 2.0 as 2.0, but a peer may not)
        return Annotated[float, Strict(), Field(allow_inf_nan=False, **ge)]
    if hint is type(None):
        return None
    if origin in (Union, types.UnionType):
        return functools.reduce(operator.or_, (_checked(a, meta) for a in args))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple.__class_getitem__((_checked(args[0], meta), ...))
    if origin is tuple:
        return tuple.__class_getitem__(tuple(_checked(a, meta) for a in args))
    if origin is frozenset:
        return frozenset.__class_getitem__(_checked(args[0], meta))
    if origin is dict and args[0] is str and args[1] is Any:
        return JsonObject
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _model(hint)
    raise TypeError(f"no wire form for {hint!r}")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


@functools.cache
def _model(cls: type) -> type[BaseModel]:
    """A pydantic model of `cls`'s wire fields, named by their short keys."""
    fields: dict[str, Any] = {}
    for f in _fields(cls):
        default = f.default if f.meta.get("optional") else ...
        fields[f.key] = (_checked(f.hint, f.meta), default)
    return create_model(f"{cls.__name__}Wire", __base__=_Wire, **fields)


Builder = Callable[..., Any]


@functools.cache
def _builder(cls: type) -> Builder:
    """Builds the dataclass `cls` from its checked wire model (nested ones too)."""
    plan: list[tuple[str, str, Builder | None, bool]] = []  # key, name, nested, many
    for f in _fields(cls):
        args = get_args(f.hint)
        if dataclasses.is_dataclass(f.hint) and isinstance(f.hint, type):
            plan.append((f.key, f.name, _builder(f.hint), False))
        elif get_origin(f.hint) is tuple and args and isinstance(args[0], type) \
                and dataclasses.is_dataclass(args[0]):  # fmt: skip
            plan.append((f.key, f.name, _builder(args[0]), True))
        else:
            plan.append((f.key, f.name, None, False))

    def build(checked: BaseModel, **extra: Any) -> Any:
        values = dict(extra)
        for key, name, nested, many in plan:
            v = getattr(checked, key)
            if nested is not None:
                v = tuple(nested(x) for x in v) if many else nested(v)
            values[name] = v
        return cls(**values)

    return build


class _Envelope(_Wire):
    s: Annotated[str, Strict(), Field(min_length=1)]
    b: Annotated[str, Strict(), Field(min_length=1)]
    i: Annotated[list[Any], Strict()]


def _why(e: ValidationError) -> str:
    """The first problem as `path.of.wire.keys: message` (one is enough to say what)."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def decode_batch(body: bytes) -> Batch:
    """The sender and the messages of one POST body; raises only WireError."""
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
    items: list[m.Message] = []
    for n, item in enumerate(env.i):
        tag = item.get("t") if type(item) is dict else None
        if type(tag) is not str or tag not in TAGS:
            raise WireError(f"item {n} has no known type tag (got {tag!r:.40})")
        cls: type = TAGS[tag]
        try:
            checked = _model(cls).model_validate(item)
        except ValidationError as e:
            raise WireError(f"item {n} ({tag!r}) is malformed: {_why(e)}") from None
        items.append(_builder(cls)(checked, sender=env.s))
    return Batch(env.s, env.b, tuple(items))
