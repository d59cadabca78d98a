"""Capacity on a real node: Ollama's 503 'server busy' is backpressure, tpm never-fits is 422."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.procs import meshlb_node, sim_ollama

pytestmark = pytest.mark.integration
MODEL = "llama3.2:1b"


async def test_backend_busy_503_is_absorbed_by_requeueing() -> None:
    """Ollama with 1 slot and no queue answers 503 to extra requests; clients never see it."""
    with (
        sim_ollama("--max-queue", "0", tokens_per_second=200, parallel=1) as sim,
        meshlb_node(sim.url, "--max-concurrency", "4", node_id="busy") as n,
    ):
        statuses: list[int] = []
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(i: int) -> None:
                r = await client.post(
                    f"{n.url}/api/generate",
                    json={
                        "model": MODEL,
                        "prompt": f"p{i}",
                        "stream": False,
                        "options": {"num_predict": 10},
                    },
                )
                statuses.append(r.status_code)

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(one, i)
            queue = (await client.get(f"{n.url}/v1/queue")).json()
            sim_stats = (await client.get(f"{sim.url}/sim/stats")).json()
        assert statuses == [200] * 8
        assert queue["counters"]["requeued_busy"] >= 1
        assert sim_stats["rejected_busy"] >= 1  # the backend really did say busy


def test_task_that_can_never_fit_the_tpm_is_422() -> None:
    with (
        sim_ollama(tokens_per_second=200) as sim,
        meshlb_node(sim.url, "--tpm", "100", node_id="tpm") as n,
    ):
        r = httpx.post(
            f"{n.url}/api/generate",
            json={"model": MODEL, "prompt": "x", "options": {"num_predict": 1000}},
        )
        assert r.status_code == 422, r.text
        assert "tpm" in r.json()["error"].lower() or "token" in r.json()["error"].lower()
        ok = httpx.post(
            f"{n.url}/api/generate",
            json={"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 5}},
        )
        assert ok.status_code == 200


def test_full_queue_is_503_with_retry_after() -> None:
    with (
        sim_ollama(tokens_per_second=20, parallel=1) as sim,
        meshlb_node(sim.url, "--max-concurrency", "1", "--max-queue", "2", node_id="full") as n,
    ):
        body = {
            "kind": "generate",
            "model": MODEL,
            "request": {"prompt": "x", "options": {"num_predict": 200}},
        }
        codes = [httpx.post(f"{n.url}/v1/tasks", json=body).status_code for _ in range(5)]
        assert codes[:3] == [202, 202, 202]  # one running, two queued
        assert codes[3:] == [503, 503]
        r = httpx.post(f"{n.url}/v1/tasks", json=body)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "queue" in r.json()["error"]
