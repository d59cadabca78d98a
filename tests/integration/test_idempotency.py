"""Mesh-wide idempotency (issue 15, defect 1): the same key gives the same task
whichever node each submission reaches, and after the node that decided it dies.

Before: the key sent to n0 gave task t-7fbe…, the same key sent to n1 a second task.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from meshlb.mesh.arbiter import arbiter_for
from tests.procs import alive_ids, meshlb_node, sim_ollama, wait_until

pytestmark = pytest.mark.integration
IDS = ("i0", "i1", "i2")
KEY = "cluster-key-for-idem"


def body(key: str) -> dict[str, Any]:
    return {
        "kind": "generate",
        "model": "llama3.2:1b",
        "request": {"prompt": f"idempotent {key}", "options": {"num_predict": 3}},
        "idempotency_key": key,
    }


def test_one_key_is_one_task_on_every_node_and_after_its_arbiter_dies() -> None:
    with (
        sim_ollama(tokens_per_second=300) as s0,
        sim_ollama(tokens_per_second=300) as s1,
        sim_ollama(tokens_per_second=300) as s2,
        meshlb_node(s0.url, "--cluster-key", KEY, node_id="i0") as n0,
    ):
        seed = ("--join", f"127.0.0.1:{n0.extra['gossip_port']}", "--cluster-key", KEY)
        with (
            meshlb_node(s1.url, *seed, node_id="i1") as n1,
            meshlb_node(s2.url, *seed, node_id="i2") as n2,
        ):
            nodes = {"i0": n0, "i1": n1, "i2": n2}
            for n in nodes.values():
                wait_until(lambda n=n: alive_ids(n) == set(IDS), 20, f"{n.url} sees all")
            with httpx.Client(timeout=20) as client:
                for k in range(6):
                    key = f"k-{k}"
                    answers = [
                        client.post(f"{n.url}/v1/tasks", json=body(key)) for n in nodes.values()
                    ]
                    statuses = sorted(a.status_code for a in answers)
                    assert statuses == [200, 200, 202], [a.text for a in answers]
                    assert len({a.json()["id"] for a in answers}) == 1, [a.json() for a in answers]

                # the arbiter of a key dies; the survivors still give the same task
                key = next(f"dead-{i}" for i in range(100) if arbiter_for(f"dead-{i}", IDS) == "i2")
                first = client.post(f"{n0.url}/v1/tasks", json=body(key))
                assert first.status_code == 202, first.text
                task_id = first.json()["id"]
                n2.kill(signal.SIGKILL)
                for name in ("i0", "i1"):
                    again = client.post(f"{nodes[name].url}/v1/tasks", json=body(key))
                    assert again.status_code == 200, again.text
                    assert again.json()["id"] == task_id
                wait_until(lambda: "i2" not in alive_ids(n0), 20, "i0 sees i2 gone")
                again = client.post(f"{n1.url}/v1/tasks", json=body(key))
                assert again.status_code == 200 and again.json()["id"] == task_id, again.text
                # every node's own list: no key with two task ids
                time.sleep(0.5)
                by_key: dict[str, set[str]] = {}
                for n in (n0, n1):
                    rows = client.get(
                        f"{n.url}/v1/tasks", params={"scope": "local", "limit": 1000}
                    ).json()["tasks"]
                    for row in rows:
                        by_key.setdefault(row["idempotency_key"], set()).add(row["id"])
                assert all(len(ids) == 1 for ids in by_key.values()), by_key
