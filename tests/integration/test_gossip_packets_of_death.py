"""Real UDP/TCP drivers on loopback under hostile input: no datagram or stream may stop a
node, membership stays right, and every drop is counted under its reason."""

from __future__ import annotations

import random
import socket as stdsocket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import msgpack
import pytest
import structlog
import trio

from meshlb.gossip import driver as driver_mod
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.driver import GossipDriver
from meshlb.gossip.drops import DROP_REASONS
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import Addr, Alive, Datagram, Message, Ping, PingReq
from meshlb.gossip.wire import VERSION, encode_packet

FAST = GossipConfig(probe_interval_s=0.2, probe_timeout_s=0.1, gossip_interval_s=0.05)


async def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not cond():  # noqa: ASYNC110 - the drivers change state in other tasks
            await trio.sleep(0.05)


@asynccontextmanager
async def _cluster(n: int, key: str | None) -> AsyncIterator[list[GossipDriver]]:
    """n converged drivers; a driver that dies takes the nursery (and the test) with it."""
    async with trio.open_nursery() as nursery:
        drivers: list[GossipDriver] = []
        for i in range(n):
            seeds = [drivers[0].advertise] if drivers else []
            d = GossipDriver(FAST, f"n{i}", ("127.0.0.1", 0), ("127.0.0.1", 0), seeds,
                             b"", key, structlog.get_logger())  # fmt: skip
            await nursery.start(d.run)
            drivers.append(d)
        await _until(lambda: all(_alive(d) == {f"n{i}" for i in range(n)} for d in drivers))
        yield drivers
        nursery.cancel_scope.cancel()


def _alive(d: GossipDriver) -> set[str]:
    return {m.node_id for m in d.members() if m.state == "alive"}


def _member_ids(d: GossipDriver) -> set[str]:
    return {m.node_id for m in d.members()}


def _as_member(messages: tuple[Message, ...], key: str | None) -> bytes:
    """Bytes exactly as a member of the cluster (holding the key) would send them."""
    core = Membership(FAST, "insider", ("127.0.0.1", 1), b"", random.Random(7), 0.0,
                      Keyring.from_secret(key) if key else None)  # fmt: skip
    return core.encode(Datagram(("127.0.0.1", 1), messages, 0))


async def _send(dst: Addr, *datagrams: bytes) -> None:
    with trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as s:
        for data in datagrams:
            await s.sendto(data, dst)


PACKETS_OF_DEATH: dict[str, tuple[Message, ...]] = {
    "ping-req to a NUL host": (PingReq(1, "n1", ("127.0.0.1\x00", 9), True),),
    "alive of a newcomer at a NUL host": (Alive("evil", 1, ("127.0.0.1\x00", 9), b""),),
}


@pytest.mark.parametrize("key", [None, "secret"])
@pytest.mark.parametrize("which", sorted(PACKETS_OF_DEATH))
async def test_a_packet_of_death_is_dropped_and_counted(which: str, key: str | None) -> None:
    async with _cluster(3, key) as drivers:
        victim = drivers[0]
        assert victim.dropped["bad_address"] == 0
        await _send(victim.advertise, _as_member(PACKETS_OF_DEATH[which], key))
        await _until(lambda: victim.dropped["bad_address"] == 1)
        await trio.sleep(1.0)  # several probe periods: the bad address would be dialled
        for d in drivers:
            assert _member_ids(d) == {"n0", "n1", "n2"} == _alive(d)
        assert sum(victim.dropped.values()) == 1


async def test_a_send_error_to_an_unusable_address_is_counted_not_fatal() -> None:
    """Valid syntax the OS still refuses (no such name, the wrong address family)."""
    async with _cluster(2, None) as drivers:
        victim = drivers[0]
        ghosts = (Alive("ghost", 1, ("nonexistent.invalid", 9), b""),
                  Alive("ghost6", 1, ("::1", 9), b""))  # fmt: skip
        await _send(victim.advertise, encode_packet(ghosts))
        await _until(lambda: victim.dropped["send_error"] >= 2)
        await _until(lambda: {"n0", "n1"} <= _alive(victim) and "ghost" not in _alive(victim))
        assert victim.stats()["send_errors"] >= 2


def _raw(*msgs: list[object]) -> bytes:
    return bytes((VERSION,)) + bytes(msgpack.packb(list(msgs), use_bin_type=True))


UNKEYED_GARBAGE = [
    (b"\x01\xc1", "malformed"),
    (b"\x01" + random.Random(1).randbytes(300), "malformed"),
    (bytes(2000), "oversized"),
    (b"\x07" + msgpack.packb([[1, 1, "n0"]]), "bad_version"),
    (_raw([99, 1]), "unknown_type"),
    (_raw([5, "x", 1, "10.0.0.1 ", 9, b""]), "bad_address"),
    (_raw([5, "x", 1, "10.0.0.1", 0, b""]), "bad_address"),
    (_raw([5, "x\x00", 1, "10.0.0.1", 9, b""]), "bad_node_id"),
    (_raw([3, -1]), "malformed"),
]


async def test_garbage_datagrams_leave_membership_right_and_are_counted_by_reason() -> None:
    async with _cluster(3, None) as drivers:
        victim = drivers[0]
        before = dict(victim.dropped)
        assert set(before) == set(DROP_REASONS) and not any(before.values())
        await _send(victim.advertise, *(data for data, _ in UNKEYED_GARBAGE))
        want: dict[str, int] = {}
        for _, reason in UNKEYED_GARBAGE:
            want[reason] = want.get(reason, 0) + 1
        await _until(lambda: sum(victim.dropped.values()) == len(UNKEYED_GARBAGE))
        assert {r: n for r, n in victim.dropped.items() if n} == want
        await trio.sleep(0.5)
        for d in drivers:
            assert _member_ids(d) == _alive(d) == {"n0", "n1", "n2"}


async def test_with_a_key_unsealed_and_foreign_packets_count_as_auth_failed() -> None:
    async with _cluster(2, "right") as drivers:
        victim = drivers[0]
        ping = (Ping(1, "n0"),)
        await _send(victim.advertise, encode_packet(ping), _as_member(ping, "wrong"), b"\xe1" * 60)
        await _until(lambda: victim.dropped["auth_failed"] == 3)
        assert _alive(victim) == {"n0", "n1"}


async def _tcp_garbage(dst: Addr, data: bytes, *, close_after_send: bool) -> bytes:
    """Send `data` on the push-pull port; return what the node answered before closing."""
    stream = await trio.open_tcp_stream(*dst)
    answer = b""
    async with stream:
        try:
            await stream.send_all(data)
            if close_after_send:
                await stream.send_eof()
            with trio.fail_after(5):  # the node must close its side: no hanging connection
                while chunk := await stream.receive_some(65536):
                    answer += chunk
        except trio.BrokenResourceError:  # it closed (or reset) before we were done
            pass
    return answer


async def test_garbage_on_the_push_pull_port_is_closed_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(driver_mod, "STREAM_TIMEOUT_S", 0.5)
    async with _cluster(2, "secret") as drivers:
        victim = drivers[0]
        dst = victim.advertise
        frame = random.Random(2).randbytes(100)
        cases = [
            (b"\xff\xff\xff\xff" + bytes(10), True, "oversized"),  # a 4 GiB frame announced
            (struct.pack(">I", len(frame)) + frame, True, "auth_failed"),  # not sealed
            (struct.pack(">I", 1000) + bytes(10), True, "malformed"),  # closed mid-frame
            (struct.pack(">I", 1000) + bytes(10), False, "stream_timeout"),  # never finishes
        ]
        for data, close, reason in cases:
            want = victim.dropped[reason] + 1
            assert await _tcp_garbage(dst, data, close_after_send=close) == b""

            def counted(reason: str = reason, want: int = want) -> bool:
                return victim.dropped[reason] == want

            await _until(counted)
        assert sum(victim.dropped.values()) == len(cases)
        assert _alive(victim) == {"n0", "n1"}


async def test_the_driver_survives_what_gets_past_the_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Second line of defence: a NUL address already inside the core (as if the decoder
    had missed it) is a counted send error, and a core that raises on one datagram is a
    counted handler error; both drivers keep gossiping."""
    async with _cluster(2, None) as drivers:
        victim = drivers[0]
        core = victim.core
        assert core is not None
        now = trio.current_time()
        core.receive((PingReq(1, "n1", ("127.0.0.1\x00", 9), True),), ("127.0.0.1", 9), now)
        core.receive((Alive("evil", 1, ("127.0.0.1\x00", 9), b""),), ("127.0.0.1", 9), now)
        await _until(lambda: victim.dropped["send_error"] >= 2)

        def boom(*_: object) -> None:
            raise RuntimeError("a bug in the core")

        with monkeypatch.context() as patch:
            patch.setattr(core, "receive", boom)
            await _send(victim.advertise, encode_packet((Ping(1, "n0"),)))
            await _until(lambda: victim.dropped["handler_error"] >= 1)
        await _until(lambda: victim.core is core and _alive(drivers[1]) == {"n0", "n1"})
        before = victim.stats()["packets_in"]
        await _until(lambda: victim.stats()["packets_in"] > before + 5)


async def test_a_replayed_authentic_ping_gets_no_answer_and_is_counted() -> None:
    async with _cluster(2, "secret") as drivers:
        victim = drivers[0]
        ping = _as_member((Ping(42, "n0"),), "secret")
        with trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as s:
            await s.bind(("127.0.0.1", 0))
            await s.sendto(ping, victim.advertise)
            with trio.fail_after(5):
                answer, _ = await s.recvfrom(65536)  # the ack to an authentic ping
            assert answer
            for _ in range(20):
                await s.sendto(ping, victim.advertise)
            with trio.move_on_after(1.0) as silent:
                await s.recvfrom(65536)
            assert silent.cancelled_caught, "a replayed ping was answered"
        await _until(lambda: victim.dropped["replay"] == 20)
        assert _alive(victim) == {"n0", "n1"}
