"""The async task API on a real node: 202, idempotency, long-poll, cancel, timeout, priority."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import Proc, meshlb_node, sim_ollama

pytestmark = pytest.mark.integration
MODEL = "llama3.2:1b"


def task_body(prompt: str = "hi", num_predict: int = 4, **extra: object) -> dict[str, object]:
    return {
        "kind": "generate",
        "model": MODEL,
        "request": {"prompt": prompt, "options": {"num_predict": num_predict}},
        **extra,
    }


@pytest.fixture(scope="module")
def node() -> Iterator[Proc]:
    with sim_ollama(tokens_per_second=100) as sim, meshlb_node(sim.url) as n:
        yield n


def test_submit_wait_and_read(node: Proc) -> None:
    r = httpx.post(f"{node.url}/v1/tasks", json=task_body(priority=7))
    assert r.status_code == 202
    task = r.json()
    assert task["state"] == "queued" and task["priority"] == 7 and task["origin"] == "n1"
    done = httpx.get(f"{node.url}/v1/tasks/{task['id']}", params={"wait": 10}, timeout=15).json()
    assert done["state"] == "succeeded", done
    assert done["result"]["eval_count"] == 4 and done["result"]["done"] is True
    assert done["node"] == "n1" and done["attempts"] == 1
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    listed = httpx.get(f"{node.url}/v1/tasks", params={"state": "succeeded"}).json()["tasks"]
    assert task["id"] in [t["id"] for t in listed]


def test_chat_and_embed_tasks(node: Proc) -> None:
    chat = httpx.post(
        f"{node.url}/v1/tasks",
        json={
            "kind": "chat",
            "model": MODEL,
            "request": {
                "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": 3},
            },
        },
    ).json()
    emb = httpx.post(
        f"{node.url}/v1/tasks",
        json={"kind": "embed", "model": "nomic-embed-text", "request": {"input": "hello"}},
    ).json()
    chat = httpx.get(f"{node.url}/v1/tasks/{chat['id']}", params={"wait": 10}, timeout=15).json()
    emb = httpx.get(f"{node.url}/v1/tasks/{emb['id']}", params={"wait": 10}, timeout=15).json()
    assert chat["result"]["message"]["content"]
    assert len(emb["result"]["embeddings"][0]) > 0


def test_idempotency_key_returns_same_task(node: Proc) -> None:
    a = httpx.post(f"{node.url}/v1/tasks", json=task_body(idempotency_key="job-42"))
    b = httpx.post(f"{node.url}/v1/tasks", json=task_body(idempotency_key="job-42"))
    assert a.status_code == 202 and b.status_code == 200
    assert a.json()["id"] == b.json()["id"]


def test_cancel_queued_and_finished(node: Proc) -> None:
    slow = httpx.post(f"{node.url}/v1/tasks", json=task_body(num_predict=400)).json()
    r = httpx.delete(f"{node.url}/v1/tasks/{slow['id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    again = httpx.delete(f"{node.url}/v1/tasks/{slow['id']}")
    assert again.status_code == 409 and "already finished" in again.json()["error"]


def test_timeout_fails_the_task(node: Proc) -> None:
    t = httpx.post(f"{node.url}/v1/tasks", json=task_body(num_predict=500, timeout_s=0.5)).json()
    done = httpx.get(f"{node.url}/v1/tasks/{t['id']}", params={"wait": 10}, timeout=15).json()
    assert done["state"] == "failed" and "timed out" in done["error"]


def test_priority_10_overtakes_six_priority_1_tasks() -> None:
    """One slot, slow backend: a late priority-10 task finishes before >= 4 of six p1 tasks."""
    with (
        sim_ollama(tokens_per_second=50, parallel=1) as sim,
        meshlb_node(sim.url, "--max-concurrency", "1", node_id="p") as n,
    ):
        low = [
            httpx.post(f"{n.url}/v1/tasks", json=task_body(f"low{i}", 10, priority=1)).json()
            for i in range(6)
        ]
        high = httpx.post(f"{n.url}/v1/tasks", json=task_body("high", 10, priority=10)).json()
        finished = {}
        for t in [*low, high]:
            finished[t["id"]] = httpx.get(
                f"{n.url}/v1/tasks/{t['id']}", params={"wait": 30}, timeout=35
            ).json()["finished_at"]
        beaten = sum(1 for t in low if finished[t["id"]] > finished[high["id"]])
        assert beaten >= 4, finished


def test_streaming_client_that_leaves_while_queued_frees_its_place() -> None:
    with (
        sim_ollama(tokens_per_second=50, parallel=1) as sim,
        meshlb_node(sim.url, "--max-concurrency", "1", node_id="q") as n,
    ):
        blocker = httpx.post(f"{n.url}/v1/tasks", json=task_body(num_predict=100)).json()

        def impatient() -> None:
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(
                    f"{n.url}/api/generate", json={"model": MODEL, "prompt": "x"}, timeout=0.5
                )

        thread = threading.Thread(target=impatient)
        thread.start()
        time.sleep(0.2)
        assert httpx.get(f"{n.url}/v1/queue").json()["queued"] == 1
        thread.join()
        time.sleep(0.3)
        queue = httpx.get(f"{n.url}/v1/queue").json()
        assert queue["queued"] == 0, queue
        assert queue["node_counters"].get("client_disconnects", 0) == 1
        httpx.delete(f"{n.url}/v1/tasks/{blocker['id']}")


def test_sigkill_with_20_queued_tasks_then_restart_completes_all(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "journal")
    with sim_ollama(tokens_per_second=100, parallel=4) as sim:
        with meshlb_node(
            sim.url, "--max-concurrency", "1", "--data-dir", data_dir, node_id="durable"
        ) as n:
            ids = [
                httpx.post(f"{n.url}/v1/tasks", json=task_body(f"job{i}", 100)).json()["id"]
                for i in range(20)
            ]
            queue = httpx.get(f"{n.url}/v1/queue").json()
            assert queue["queued"] + queue["running"] >= 15, queue  # 1 s per task, one slot
            n.kill()  # SIGKILL: no chance to save anything now
            n.popen.wait(5)
        with meshlb_node(
            sim.url, "--max-concurrency", "4", "--data-dir", data_dir, node_id="durable"
        ) as n2:
            states = []
            for task_id in ids:
                r = httpx.get(f"{n2.url}/v1/tasks/{task_id}", params={"wait": 30}, timeout=35)
                assert r.status_code == 200, r.text
                states.append(r.json()["state"])
            assert states == ["succeeded"] * 20
            assert "tasks recovered from journal" in n2.log()


def test_queued_task_times_out_and_queued_task_cancels_without_running() -> None:
    with (
        sim_ollama(tokens_per_second=50, parallel=1) as sim,
        meshlb_node(sim.url, "--max-concurrency", "1", node_id="tq") as n,
    ):
        blocker = httpx.post(f"{n.url}/v1/tasks", json=task_body(num_predict=200)).json()
        late = httpx.post(f"{n.url}/v1/tasks", json=task_body(timeout_s=0.5)).json()
        queued = httpx.post(f"{n.url}/v1/tasks", json=task_body()).json()
        done = httpx.get(f"{n.url}/v1/tasks/{late['id']}", params={"wait": 5}, timeout=10).json()
        assert done["state"] == "failed" and "still queued" in done["error"]
        assert done["attempts"] == 0 and done["started_at"] is None
        cancelled = httpx.delete(f"{n.url}/v1/tasks/{queued['id']}").json()
        assert cancelled["state"] == "cancelled" and cancelled["attempts"] == 0
        assert httpx.get(f"{n.url}/v1/queue").json()["queued"] == 0
        httpx.delete(f"{n.url}/v1/tasks/{blocker['id']}")
