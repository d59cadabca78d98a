"""Streaming through a node: chunk by chunk, and a client that leaves cancels upstream."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.procs import meshlb_node, sim_ollama

pytestmark = pytest.mark.integration
MODEL = "llama3.2:1b"


def test_chunks_arrive_as_generated_not_buffered() -> None:
    with sim_ollama(tokens_per_second=20) as sim, meshlb_node(sim.url, node_id="s") as n:
        arrivals = []
        with httpx.stream(
            "POST",
            f"{n.url}/api/generate",
            json={"model": MODEL, "prompt": "x", "options": {"num_predict": 10}},
        ) as r:
            assert r.headers["content-type"].startswith("application/x-ndjson")
            for line in r.iter_lines():
                if line:
                    arrivals.append(time.monotonic())
        assert len(arrivals) == 11  # 10 tokens + the final chunk
        # At 20 tokens/s the stream spans ~0.5 s; a buffering proxy would deliver at once.
        assert arrivals[-1] - arrivals[0] > 0.3


def test_client_leaving_mid_stream_cancels_the_upstream_request() -> None:
    with sim_ollama(tokens_per_second=20) as sim, meshlb_node(sim.url, node_id="c") as n:
        with httpx.stream(
            "POST",
            f"{n.url}/api/generate",
            json={"model": MODEL, "prompt": "x", "options": {"num_predict": 400}},
        ) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i == 3:
                    break  # leave after a few tokens; closing the response drops the socket
        deadline = time.monotonic() + 5
        stats: dict[str, int] = {}
        while time.monotonic() < deadline:
            stats = httpx.get(f"{sim.url}/sim/stats").json()
            queue = httpx.get(f"{n.url}/v1/queue").json()
            if stats["cancelled"] >= 1 and queue["running"] == 0:
                break
            time.sleep(0.1)
        assert stats["cancelled"] >= 1 and stats["running"] == 0, stats
        assert httpx.get(f"{n.url}/v1/queue").json()["running"] == 0
