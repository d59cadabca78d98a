"""Membership events, past tense, drained by the driver (to log) and the mesh (to react).

Each says how it should be logged (`describe`): level, message, and who said so at
which incarnation; the driver writes the line, the core stays free of loggers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshlb.gossip.messages import Addr

# (level, message, fields) of the one log line an event makes: the driver logs it.
LogLine = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member became alive for us: new, or back from dead/left."""

    node: str
    addr: Addr
    incarnation: int
    meta: bytes

    def describe(self, me: str) -> LogLine:
        fields = {"node": self.node, "addr": self.addr, "incarnation": self.incarnation}
        return "info", "member joined", fields


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    node: str
    by: str
    incarnation: int

    def describe(self, me: str) -> LogLine:
        fields = {"node": self.node, "by": self.by, "incarnation": self.incarnation}
        return "warning", "member suspected", fields


@dataclass(frozen=True, slots=True)
class MemberRefuted:
    """A suspected member proved itself alive with a higher incarnation (this node too)."""

    node: str
    incarnation: int
    accused_by: str

    def describe(self, me: str) -> LogLine:
        what = "suspicion of us refuted" if self.node == me else "member refuted suspicion"
        fields = {"node": self.node, "accused_by": self.accused_by,
                  "incarnation": self.incarnation}  # fmt: skip
        return "info", what, fields


@dataclass(frozen=True, slots=True)
class MemberDied:
    node: str
    by: str
    incarnation: int

    def describe(self, me: str) -> LogLine:
        fields = {"node": self.node, "by": self.by, "incarnation": self.incarnation}
        return "warning", "member died", fields


@dataclass(frozen=True, slots=True)
class MemberLeft:
    node: str
    incarnation: int

    def describe(self, me: str) -> LogLine:
        return "info", "member left", {"node": self.node, "incarnation": self.incarnation}


@dataclass(frozen=True, slots=True)
class MetaChanged:
    node: str
    incarnation: int
    meta: bytes

    def describe(self, me: str) -> LogLine:
        return "debug", "member meta changed", {"node": self.node, "incarnation": self.incarnation}


@dataclass(frozen=True, slots=True)
class MemberReaped:
    """A dead or left member was forgotten after `reap_after_s`."""

    node: str

    def describe(self, me: str) -> LogLine:
        return "info", "member reaped", {"node": self.node}


@dataclass(frozen=True, slots=True)
class JoinSucceeded:
    """A seed answered our join push-pull."""

    seed: Addr
    members: int

    def describe(self, me: str) -> LogLine:
        return "info", "gossip joined", {"seed": self.seed, "members": self.members}


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
