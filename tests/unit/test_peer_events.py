"""`PeerEvents`: gossip membership -> the ownership core's peer events."""

from __future__ import annotations

from meshlb.gossip.events import (
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRefuted,
    MemberSuspected,
    MetaChanged,
)
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.peer_events import PeerEvents


def boot_of(meta: bytes) -> str | None:
    return meta.decode() or None


def joined(node: str, meta: bytes) -> MemberJoined:
    return MemberJoined(node=node, addr=("127.0.0.1", 1), incarnation=1, meta=meta)


def changed(node: str, meta: bytes) -> MetaChanged:
    return MetaChanged(node=node, incarnation=2, meta=meta)


def test_membership_changes_map_to_peer_events() -> None:
    p = PeerEvents("a", boot_of)
    assert p.translate(MemberSuspected(node="b", by="c", incarnation=1), {"a", "b"}) == [
        m.PeerSuspected("b")
    ]
    assert p.translate(MemberDied(node="b", by="c", incarnation=1), {"a", "b"}) == [m.PeerDown("b")]
    assert p.translate(MemberLeft(node="b", incarnation=1), {"a", "b"}) == [
        m.PeerDown("b", left=True)
    ]
    assert p.translate(MemberRefuted(node="b", incarnation=2, accused_by="c"), {"a"}) == [
        m.PeerUp("b")
    ]
    assert p.translate(MemberReaped(node="b"), {"a"}) == [m.PeerForgotten("b")]
    assert p.translate(MemberDied(node="a", by="c", incarnation=1), {"a"}) == []  # itself


def test_a_new_boot_id_is_a_restart_and_retires_the_old_process() -> None:
    p = PeerEvents("a", boot_of)
    assert p.translate(joined("b", b"boot-1"), {"a"}) == [m.PeerUp("b")]
    assert p.translate(changed("b", b"boot-1"), {"a", "b"}) == []  # only its load changed
    assert p.translate(changed("b", b"boot-2"), {"a", "b"}) == [
        m.PeerRestarted("b"),
        m.PeerUp("b"),
    ]
    assert ("b", "boot-1") in p.retired and ("b", "boot-2") not in p.retired


def test_unreadable_metadata_says_nothing_about_a_restart() -> None:
    p = PeerEvents("a", boot_of)
    p.translate(joined("b", b"boot-1"), {"a"})
    assert p.translate(changed("b", b""), {"a", "b"}) == []
    assert p.translate(changed("b", b"boot-1"), {"a", "b"}) == []
