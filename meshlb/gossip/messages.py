"""Gossip messages (SWIM §3-4, memberlist's wire vocabulary) as frozen dataclasses.

The pure core speaks these; `wire.py` turns them into bytes and back. A leave is a
`Dead` whose `by` is the node itself (memberlist's convention), so it rides the same
invalidation and incarnation rules as a death but ends in state `left`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

Addr = tuple[str, int]

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"
STATES = (ALIVE, SUSPECT, DEAD, LEFT)


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe (SWIM §3.1). `target` names the node meant, so a different node that
    took over the address does not answer for it."""

    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class PingReq:
    """Indirect probe request (SWIM §3.1): please ping `target` and relay its ack.
    `nack` asks for a Lifeguard nack (§IV-A) if the target stays silent."""

    seq: int
    target: str
    target_addr: Addr
    nack: bool


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a ping (direct, or relayed under the prober's sequence number)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard §IV-A: a relay heard nothing from the target; the prober is healthy."""

    seq: int


@dataclass(frozen=True, slots=True)
class Alive:
    """`node` is alive at `incarnation` with this address and opaque meta (SWIM §4.2)."""

    node: str
    incarnation: int
    addr: Addr
    meta: bytes


@dataclass(frozen=True, slots=True)
class Suspect:
    """`by` suspects `node` at `incarnation` (SWIM §4.2)."""

    node: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class Dead:
    """`by` declares `node` dead at `incarnation`; `by == node` means it left."""

    node: str
    incarnation: int
    by: str


Message = Ping | PingReq | Ack | Nack | Alive | Suspect | Dead
Update = Alive | Suspect | Dead


@dataclass(frozen=True, slots=True)
class MemberState:
    """One row of a full-state push-pull exchange."""

    node: str
    addr: Addr
    incarnation: int
    state: str
    meta: bytes


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full-state anti-entropy (memberlist push-pull); carried over a stream, not UDP."""

    states: tuple[MemberState, ...]
    join: bool


class Datagram(NamedTuple):
    """One UDP packet the core wants sent: a compound of messages, `size` its estimate."""

    addr: Addr
    messages: tuple[Message, ...]
    size: int


class StreamRequest(NamedTuple):
    """A push-pull request the driver must carry over a stream and answer back."""

    addr: Addr
    message: PushPull
