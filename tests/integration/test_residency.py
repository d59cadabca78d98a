"""Real processes: placement that knows where models are loaded (issue 11).

Three `meshlb node`s, each beside a `sim-ollama` that holds one of two 2 GB models at
a time (3 GB of memory; a load takes ~1 s at 2 GB/s). 40 requests alternating between
the models, each sent to the next node in turn: a residency-blind balancer loads a
model on nearly every request; meshlb keeps each model where it is loaded. Then
`/api/ps` through any node names the host of each loaded model, and `keep_alive: 0`
through any node unloads the model on the host that had it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.procs import Proc, alive_ids, small_memory_mesh, wait_until

pytestmark = pytest.mark.integration
MODELS = ("alpha:latest", "beta:latest")
COLD_LOAD_NS = 100_000_000  # a load_duration above 0.1 s is a cold load


def generate(node: Proc, model: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": "hello", "stream": False, "options": {"num_predict": 8}}
    r = httpx.post(f"{node.url}/api/generate", json={**body, **extra}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def loaded_on(sim: Proc) -> set[str]:
    return {m["name"] for m in httpx.get(f"{sim.url}/api/ps", timeout=5).json()["models"]}


def test_alternating_models_load_at_most_four_times_ps_names_hosts_unload_reaches_holder() -> None:
    with small_memory_mesh("r") as (sims, nodes):
        ids = {"r0", "r1", "r2"}
        wait_until(lambda: all(alive_ids(n) == ids for n in nodes), 20, "3 nodes see each other")

        cold = 0
        for i in range(40):
            model = MODELS[i % 2]
            answer = generate(nodes[i % 3], model)
            cold += answer.get("load_duration", 0) > COLD_LOAD_NS
        loads = [httpx.get(f"{s.url}/sim/stats", timeout=5).json()["loads"] for s in sims]
        assert cold <= 4, f"{cold} cold loads (sims counted {loads})"
        assert sum(loads) <= 4, loads

        # /api/ps through any node: one entry per loaded model per host, with its node
        truth = {(f"r{i}", m) for i, s in enumerate(sims) for m in loaded_on(s)}
        assert {m for _, m in truth} == set(MODELS)
        for node in nodes:
            entries = httpx.get(f"{node.url}/api/ps", timeout=5).json()["models"]
            assert {(e["node"], e["name"]) for e in entries} == truth

        # keep_alive 0 through a node that does not hold the model unloads it where it is
        model = sorted(truth)[0][1]
        via = next(n for i, n in enumerate(nodes) if (f"r{i}", model) not in truth)
        r = httpx.post(
            f"{via.url}/api/generate", json={"model": model, "keep_alive": 0}, timeout=30
        )
        assert r.status_code == 200, r.text
        holders = [s for i, s in enumerate(sims) if (f"r{i}", model) in truth]
        wait_until(lambda: all(model not in loaded_on(s) for s in holders), 5, f"{model} unloaded")
        assert all(model not in loaded_on(s) for s in sims)
