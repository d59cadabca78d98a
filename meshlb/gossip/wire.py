"""Gossip wire format: msgpack behind a version byte, every field validated.

Datagram payload: VERSION byte, then a msgpack array of messages (a compound packet,
memberlist-style), each an array `[type, fields...]`. Push-pull frames (carried over a
stream) use the same version byte and a `[TYPE_PUSH_PULL, join, [rows...]]` body.
Decoding never trusts the sender: types, lengths and ranges are checked, and any
failure is a `WireError` the caller counts and drops; nothing else escapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from meshlb.gossip import drops
from meshlb.gossip.addresses import valid_host, valid_port
from meshlb.gossip.messages import (
    STATES,
    Ack,
    Addr,
    Alive,
    Dead,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)

VERSION = 1
MAX_NODE_ID = 128
MAX_META = 512
MAX_U64 = 2**64 - 1
MAX_STREAM_BYTES = 16 * 1024 * 1024
MAX_MESSAGES = 256
MAX_STATES = 100_000

T_PING, T_PING_REQ, T_ACK, T_NACK, T_ALIVE, T_SUSPECT, T_DEAD, T_PUSH_PULL = range(1, 9)
_STATE_CODES = {s: i for i, s in enumerate(STATES)}


class WireError(ValueError):
    """A packet that is not a valid gossip packet.

    `kind` names the coarse stats counter (`dropped_malformed`, ...); `reason` the
    drop reason of `meshlb.gossip.drops` (finer: `bad_address`, `unknown_type`, ...).
    """

    def __init__(self, kind: str, why: str, reason: str = drops.MALFORMED) -> None:
        super().__init__(f"{kind}: {why}")
        self.kind = kind
        self.reason = reason


def message_fields(msg: Message) -> list[Any]:
    """The msgpack array of one message."""
    if isinstance(msg, Ping):
        return [T_PING, msg.seq, msg.target]
    if isinstance(msg, Ack):
        return [T_ACK, msg.seq]
    if isinstance(msg, Alive):
        return [T_ALIVE, msg.node, msg.incarnation, msg.addr[0], msg.addr[1], msg.meta]
    if isinstance(msg, Suspect):
        return [T_SUSPECT, msg.node, msg.incarnation, msg.by]
    if isinstance(msg, Dead):
        return [T_DEAD, msg.node, msg.incarnation, msg.by]
    if isinstance(msg, PingReq):
        return [T_PING_REQ, msg.seq, msg.target, msg.target_addr[0], msg.target_addr[1], msg.nack]
    return [T_NACK, msg.seq]


def message_size(msg: Message) -> int:
    """Encoded bytes of `msg` inside a compound packet."""
    return len(msgpack.packb(message_fields(msg)))


# Version byte + array header (up to 3 bytes for <= 65535 messages).
PACKET_HEADER_BYTES = 4


def encode_packet(messages: Sequence[Message]) -> bytes:
    """Version byte + msgpack array of messages."""
    body: bytes = msgpack.packb([message_fields(m) for m in messages], use_bin_type=True)
    return bytes((VERSION,)) + body


def encode_push_pull(pp: PushPull) -> bytes:
    rows = [
        [s.node, s.addr[0], s.addr[1], s.incarnation, _STATE_CODES[s.state], s.meta]
        for s in pp.states
    ]
    body: bytes = msgpack.packb([T_PUSH_PULL, pp.join, rows], use_bin_type=True)
    return bytes((VERSION,)) + body


def _unpack(data: bytes, limit: int, max_array: int) -> Any:
    if len(data) > limit:
        raise WireError("dropped_oversize", f"{len(data)} bytes > {limit}", drops.OVERSIZED)
    if len(data) < 2:
        raise WireError("dropped_malformed", "truncated")
    if data[0] != VERSION:
        raise WireError("dropped_version", f"version {data[0]}", drops.BAD_VERSION)
    try:
        return msgpack.unpackb(
            data[1:],
            raw=False,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many types on garbage; all mean "malformed"
        raise WireError("dropped_malformed", f"msgpack: {type(e).__name__}") from None


def _bad(why: str, reason: str = drops.MALFORMED) -> WireError:
    return WireError("dropped_malformed", why, reason)


def _u64(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= MAX_U64:
        raise _bad("not a u64")
    return v


def _node(v: Any) -> str:
    """A node id: 1-128 printable characters (it ends up in logs, JSON and headers)."""
    if type(v) is not str or not 0 < len(v) <= MAX_NODE_ID or not v.isprintable():
        raise _bad("bad node id", drops.BAD_NODE_ID)
    return v


def _addr(host: Any, port: Any) -> Addr:
    """An address we may dial later: checked here, before it can reach a socket call."""
    if type(host) is not str or not valid_host(host):
        raise _bad("bad host", drops.BAD_ADDRESS)
    if type(port) is not int or not valid_port(port):
        raise _bad("bad port", drops.BAD_ADDRESS)
    return (host, port)


def _meta(v: Any) -> bytes:
    if type(v) is not bytes or len(v) > MAX_META:
        raise _bad("bad meta")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _bad("not a bool")
    return v


def _arity(f: list[Any], n: int) -> None:
    if len(f) != n:
        raise _bad(f"type {f[0]} needs {n} fields, got {len(f)}")


def _d_ping(f: list[Any]) -> Message:
    _arity(f, 3)
    return Ping(_u64(f[1]), _node(f[2]))


def _d_ping_req(f: list[Any]) -> Message:
    _arity(f, 6)
    return PingReq(_u64(f[1]), _node(f[2]), _addr(f[3], f[4]), _bool(f[5]))


def _d_ack(f: list[Any]) -> Message:
    _arity(f, 2)
    return Ack(_u64(f[1]))


def _d_nack(f: list[Any]) -> Message:
    _arity(f, 2)
    return Nack(_u64(f[1]))


def _d_alive(f: list[Any]) -> Message:
    _arity(f, 6)
    return Alive(_node(f[1]), _u64(f[2]), _addr(f[3], f[4]), _meta(f[5]))


def _d_suspect(f: list[Any]) -> Message:
    _arity(f, 4)
    return Suspect(_node(f[1]), _u64(f[2]), _node(f[3]))


def _d_dead(f: list[Any]) -> Message:
    _arity(f, 4)
    return Dead(_node(f[1]), _u64(f[2]), _node(f[3]))


_DECODERS: dict[int, Callable[[list[Any]], Message]] = {
    T_PING: _d_ping,
    T_PING_REQ: _d_ping_req,
    T_ACK: _d_ack,
    T_NACK: _d_nack,
    T_ALIVE: _d_alive,
    T_SUSPECT: _d_suspect,
    T_DEAD: _d_dead,
}


def decode_packet(data: bytes, max_bytes: int = 1400) -> tuple[Message, ...]:
    """Validated messages of one datagram payload, or WireError."""
    body = _unpack(data, max_bytes, MAX_MESSAGES)
    if type(body) is not list or not body:
        raise _bad("packet is not a non-empty array")
    out: list[Message] = []
    for f in body:
        if type(f) is not list or not f or type(f[0]) is not int:
            raise _bad("message is not [type, ...]")
        dec = _DECODERS.get(f[0])
        if dec is None:
            raise _bad(f"unknown message type {f[0]}", drops.UNKNOWN_TYPE)
        out.append(dec(f))
    return tuple(out)


def _d_row(r: Any) -> MemberState:
    if type(r) is not list or len(r) != 6:
        raise _bad("bad push-pull row")
    code = r[4]
    if type(code) is not int or not 0 <= code < len(STATES):
        raise _bad("bad state code")
    return MemberState(_node(r[0]), _addr(r[1], r[2]), _u64(r[3]), STATES[code], _meta(r[5]))


def decode_push_pull(data: bytes, max_bytes: int = MAX_STREAM_BYTES) -> PushPull:
    """A validated push-pull frame, or WireError."""
    body = _unpack(data, max_bytes, MAX_STATES)
    if type(body) is not list or len(body) != 3 or body[0] != T_PUSH_PULL:
        raise _bad("not a push-pull frame")
    if type(body[2]) is not list:
        raise _bad("push-pull rows are not an array")
    return PushPull(tuple(_d_row(r) for r in body[2]), _bool(body[1]))
