"""Membership events, past tense, drained by the driver (to log) and the mesh (to react)."""

from __future__ import annotations

from dataclasses import dataclass

from meshlb.gossip.messages import Addr


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member became alive for us: new, or back from dead/left."""

    node: str
    addr: Addr
    incarnation: int
    meta: bytes


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    node: str
    by: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberRefuted:
    """A suspected member proved itself alive with a higher incarnation (this node too)."""

    node: str
    incarnation: int
    accused_by: str


@dataclass(frozen=True, slots=True)
class MemberDied:
    node: str
    by: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberLeft:
    node: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class MetaChanged:
    node: str
    incarnation: int
    meta: bytes


@dataclass(frozen=True, slots=True)
class MemberReaped:
    """A dead or left member was forgotten after `reap_after_s`."""

    node: str


@dataclass(frozen=True, slots=True)
class JoinSucceeded:
    """A seed answered our join push-pull."""

    seed: Addr
    members: int


Event = (
    MemberJoined
    | MemberSuspected
    | MemberRefuted
    | MemberDied
    | MemberLeft
    | MetaChanged
    | MemberReaped
    | JoinSucceeded
)
