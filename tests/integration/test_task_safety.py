"""202 only when the task is safe (issue 15, defect 2): held by a second node, or
journalled with --data-dir. Before, the accepting node waited 2 s for its replica's
ack and then answered 202 anyway; its death right after would lose the task."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from tests.procs import alive_ids, meshlb_node, sim_ollama, wait_until

pytestmark = pytest.mark.integration


def task(key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "generate",
        "model": "llama3.2:1b",
        "request": {"prompt": "safe?", "options": {"num_predict": 3}},
    }
    if key is not None:
        body["idempotency_key"] = key
    return body


def test_no_202_while_the_only_replica_does_not_answer() -> None:
    with (
        sim_ollama() as sa,
        sim_ollama() as sb,
        meshlb_node(sa.url, node_id="sa") as a,
        meshlb_node(sb.url, "--join", f"127.0.0.1:{a.extra['gossip_port']}", node_id="sb") as b,
    ):
        wait_until(lambda: alive_ids(a) == {"sa", "sb"}, 20, "a sees b")
        with httpx.Client(timeout=30) as client:
            ok = client.post(f"{a.url}/v1/tasks", json=task())
            assert ok.status_code == 202, ok.text
            b.kill(signal.SIGSTOP)  # alive to gossip for a while, but acks nothing
            try:
                started = time.monotonic()
                refused = client.post(f"{a.url}/v1/tasks", json=task())
                took = time.monotonic() - started
                assert refused.status_code == 503, refused.text
                assert "retry-after" in refused.headers and "second node" in refused.json()["error"]
                assert took < 10
                keyed = client.post(f"{a.url}/v1/tasks", json=task("k-safe"))
                assert keyed.status_code == 503, keyed.text
            finally:
                b.kill(signal.SIGCONT)
            wait_until(lambda: alive_ids(a) == {"sa", "sb"}, 30, "b is back")
            # the keyed task was kept: a retry with the key gets it (and it is safe now)
            deadline = time.monotonic() + 20
            while True:
                again = client.post(f"{a.url}/v1/tasks", json=task("k-safe"))
                if again.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert again.status_code == 200, again.text
            ids = set()
            for n in (a, b):
                rows = client.get(f"{n.url}/v1/tasks", params={"scope": "local"}).json()["tasks"]
                ids |= {r["id"] for r in rows if r["idempotency_key"] == "k-safe"}
            assert ids == {again.json()["id"]}  # one task for the key, anywhere
        assert "task refused: no second node held it in time" in a.log()
