"""Real UDP/TCP on loopback: GossipDrivers in one trio process, then separate processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.driver import GossipDriver
from meshlb.gossip.events import MemberJoined

FAST = GossipConfig(probe_interval_s=0.2, probe_timeout_s=0.1, gossip_interval_s=0.05)


async def _start(
    nursery: trio.Nursery, i: int, seeds: list[tuple[str, int]], key: str | None
) -> GossipDriver:
    d = GossipDriver(
        FAST,
        f"n{i}",
        ("127.0.0.1", 0),
        ("127.0.0.1", 0),
        seeds,
        f"m{i}".encode(),
        key,
        structlog.get_logger(),
    )
    await nursery.start(d.run)
    return d


async def _until(cond: Callable[[], bool]) -> None:
    """Poll a condition on the drivers' views (they change in other tasks)."""
    for _ in range(100_000):
        if cond():
            return
        await trio.sleep(0.05)


async def _converged(drivers: list[GossipDriver], n: int) -> None:
    await _until(lambda: all(sum(m.state == "alive" for m in d.members()) == n for d in drivers))


async def test_five_drivers_converge_over_udp_with_a_cluster_key() -> None:
    async with trio.open_nursery() as nursery:
        first = await _start(nursery, 0, [], "secret")
        events = first.subscribe()
        seed = first.advertise
        drivers = [first] + [await _start(nursery, i, [seed], "secret") for i in range(1, 5)]
        with trio.fail_after(10):
            await _converged(drivers, 5)
        assert all(d.joined for d in drivers)
        assert {m.meta for m in first.members()} == {f"m{i}".encode() for i in range(5)}
        joined = set()
        while len(joined) < 4:
            ev = events.receive_nowait()
            if isinstance(ev, MemberJoined):
                joined.add(ev.node)
        drivers[1].update_meta(b"new")
        with trio.fail_after(5):
            await _until(
                lambda: all(
                    m.meta == b"new" for d in drivers for m in d.members() if m.node_id == "n1"
                )
            )
        await drivers[2].leave(timeout_s=2.0)
        with trio.fail_after(5):
            await _until(
                lambda: all(
                    m.state == "left"
                    for d in drivers
                    for m in d.members()
                    if m.node_id == "n2" and d is not drivers[2]
                )
            )
        s = first.stats()
        assert s["packets_in"] > 0 and s["packets_out"] > 0 and s["dropped_auth"] == 0
        # A stranger with the wrong key: its packets are dropped and counted.
        intruder = await _start(nursery, 9, [seed], "wrong")
        await trio.sleep(1.5)
        assert not intruder.joined
        assert first.stats()["dropped_auth"] > 0
        nursery.cancel_scope.cancel()


# ---- separate processes: converge, SIGKILL one, restart it --------------------------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from tests.procs import free_gossip_port  # noqa: E402


def _view(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            return {m["id"]: m["state"] for m in json.load(f)["members"]}
    except (OSError, ValueError):
        return {}


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if cond():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s}s")


@pytest.mark.integration
@pytest.mark.slow
def test_five_processes_sigkill_detected_and_restart_rejoins() -> None:
    tmp = tempfile.mkdtemp(prefix="gossip-")
    ports = [free_gossip_port() for _ in range(5)]

    def spawn(i: int) -> subprocess.Popen[bytes]:
        state = os.path.join(tmp, f"n{i}.json")
        argv = [sys.executable, "-m", "meshlb.gossip", "--node-id", f"n{i}",
                "--bind", f"127.0.0.1:{ports[i]}", "--join", f"127.0.0.1:{ports[0]}",
                "--join", f"127.0.0.1:{ports[1]}", "--cluster-key", "k",
                "--state-file", state]  # fmt: skip
        log = open(state + ".log", "wb")  # noqa: SIM115
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    files = [os.path.join(tmp, f"n{i}.json") for i in range(5)]

    def all_alive() -> bool:
        return all(sum(s == "alive" for s in _view(f).values()) == 5 for f in files)

    procs: list[subprocess.Popen[bytes] | None] = []
    for attempt in range(3):
        # A port probed free can be taken by another process before our child binds it
        # (a busy CI machine): if a child died at start, start over on fresh ports.
        procs = [spawn(i) for i in range(5)]
        time.sleep(1.0)
        if all(p is not None and p.poll() is None for p in procs) or attempt == 2:
            break
        for p in procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        ports[:] = [free_gossip_port() for _ in range(5)]
    try:
        try:
            _wait(all_alive, 30, "5 processes converging")
        except AssertionError:
            logs = [Path(f + ".log").read_text(errors="replace")[-800:] for f in files]
            raise AssertionError(
                f"no convergence; exit codes "
                f"{[p.poll() if p else None for p in procs]}; logs: {logs}"
            ) from None
        victim = procs[3]
        assert victim is not None
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        procs[3] = None
        survivors = [f for i, f in enumerate(files) if i != 3]
        took = _wait(
            lambda: all(_view(f).get("n3") == "dead" for f in survivors),
            20, "every survivor marking n3 dead",
        )  # fmt: skip
        assert took <= 20
        os.remove(files[3])
        procs[3] = spawn(3)
        _wait(all_alive, 30, "restarted n3 alive everywhere")
    finally:
        for p in procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            if p is not None:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
