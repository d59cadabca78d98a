"""The node's views of the mesh over gossip: what placement reads, what /v1/peers shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshlb.api.ports import NodeCounters
from meshlb.gossip.table import MemberView
from meshlb.mesh.announce import LocalStatus
from meshlb.mesh.meta import Load, Moves, NodeMeta, encode_meta
from meshlb.mesh.node_view import GossipMembers, MeshPeers
from meshlb.mesh.view import MemberLike, peers_from_members
from meshlb.sched.limits import Limits
from meshlb.sched.scheduler import Scheduler
from meshlb.sched.stats import SchedulerStats
from meshlb.tokens import RateAverage

M = "llama3.2:1b"


@dataclass
class Catalog:
    names: list[str] = field(default_factory=lambda: [M])
    reachable: bool = True


class Sched:
    """The scheduler as this node's status reads it (the pure core at t=0)."""

    def stats(self) -> SchedulerStats:
        return Scheduler(Limits()).stats(0.0)


@dataclass
class Gossip:
    """The gossip driver as the views read it: a member list set by the test."""

    listed: list[MemberView] = field(default_factory=list)
    joined: bool = True
    dropped: Mapping[str, int] = field(default_factory=dict)

    def members(self) -> Sequence[MemberLike]:
        return self.listed

    def update_meta(self, meta: bytes) -> None:
        raise AssertionError("the views never write gossip")


def member(node_id: str, state: str = "alive", meta: NodeMeta | None = None) -> MemberView:
    meta = meta or NodeMeta(f"{node_id}:11435", (M,), load=Load(queued=7))
    return MemberView(node_id, ("10.0.0.1", 7946), state, 3, 100.0, encode_meta(meta))


def views(gossip: Gossip) -> tuple[GossipMembers, MeshPeers]:
    local = LocalStatus("a", "a:11435", "boot1", Sched(), Catalog(), RateAverage())
    members = GossipMembers(local, gossip, lambda: 110.0, lambda: 5000.0)

    def own_meta() -> NodeMeta:
        return local.meta(Moves(forwarded=4))

    return members, MeshPeers(members, own_meta, "0.0.0.0:7946", 4000.0)


def test_this_node_is_shown_with_its_live_numbers_not_the_gossiped_ones() -> None:
    gossip = Gossip([member("a"), member("b")])
    _, mesh = views(gossip)
    a, b = mesh.peers()
    assert a.node_id == "a" and a.load.queued == 0 and a.counters()["forwarded"] == 4
    assert b.node_id == "b" and b.load.queued == 7  # a peer as gossiped
    assert a.last_change_wall == 5000.0 - 10.0  # gossip's Trio time on the wall clock


def test_before_gossip_lists_it_this_node_is_alone_and_alive() -> None:
    _, mesh = views(Gossip([]))
    (alone,) = mesh.peers()
    assert (alone.node_id, alone.state, alone.last_change_wall) == ("a", "alive", 4000.0)
    assert alone.meta is not None and alone.meta.http_addr == "a:11435"


def test_fan_outs_go_to_alive_peers_only_never_to_this_node() -> None:
    gossip = Gossip([member("a"), member("b"), member("c", "suspect"), member("d", "dead")])
    _, mesh = views(gossip)
    assert mesh.alive_peer_urls() == ["http://b:11435"]
    assert mesh.address_of("c") == "c:11435"  # known, though not a fan-out target


def test_placement_gets_every_readable_peer_with_its_state_and_this_node_apart() -> None:
    """The placement service keeps the alive ones; a peer whose metadata cannot be
    read is no candidate at all."""
    unreadable = MemberView("x", ("10.0.0.9", 7946), "alive", 1, 100.0, b"\xff")
    members, _ = views(Gossip([member("a"), member("b"), member("c", "suspect"), unreadable]))
    assert [(m.candidate.node_id, m.state) for m in members.peers()] == [
        ("b", "alive"),
        ("c", "suspect"),
    ]
    local = members.local_candidate()
    assert local.node_id == "a" and local.is_local and M in local.models


def test_decoding_reads_no_clock_of_its_own() -> None:
    (peer,) = peers_from_members([member("b")], trio_now=100.0, wall_now=1.0)
    assert peer.last_change_wall == 1.0


def test_counters_show_the_ones_that_moved() -> None:
    counters = NodeCounters()
    assert counters.nonzero() == {}
    counters.forwarded += 2
    counters.completed += 1
    assert counters.nonzero() == {"forwarded": 2, "completed": 1}
