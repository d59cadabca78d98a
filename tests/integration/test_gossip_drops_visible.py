"""Issue 15, defect 5: gossip drops are counted where an operator sees them
(`/v1/queue` and `meshlb_gossip_packets_dropped_total{reason}` in `/metrics`)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.procs import meshlb_node, sim_ollama

pytestmark = pytest.mark.integration


def test_garbage_datagrams_show_up_in_queue_and_metrics() -> None:
    with sim_ollama() as sim, meshlb_node(sim.url, node_id="dropper") as n:
        port = int(str(n.extra["gossip_port"]))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(5):
                s.sendto(b"\x00garbage", ("127.0.0.1", port))
        deadline = time.monotonic() + 5
        dropped: dict[str, int] = {}
        while time.monotonic() < deadline:
            dropped = httpx.get(f"{n.url}/v1/queue").json()["gossip_dropped"]
            if sum(dropped.values()) >= 5:
                break
            time.sleep(0.1)
        assert sum(dropped.values()) >= 5, dropped
        metrics = httpx.get(f"{n.url}/metrics").text
        lines = [
            x for x in metrics.splitlines() if x.startswith("meshlb_gossip_packets_dropped_total{")
        ]
        assert sum(float(x.rsplit(" ", 1)[1]) for x in lines) >= 5, lines
