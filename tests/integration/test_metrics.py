"""`/metrics` of real nodes after real work: every family SPEC names, with its type,
parsed by prometheus_client's own text parser, and the values moved by that work.

Two nodes: `a` has the chat model (its simulated Ollama loads it cold, 300 ms), `b`
has only the embedding model, so a generate sent to `b` is forwarded to `a`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.procs import Proc, alive_ids, meshlb_node, sim_ollama, wait_until

pytestmark = pytest.mark.integration
MODEL = "llama3.2:1b"

# family name as the parser reports it (counters without `_total`) -> type
FAMILIES = {
    "meshlb_requests": "counter",
    "meshlb_queue_wait_seconds": "histogram",
    "meshlb_time_to_first_token_seconds": "histogram",
    "meshlb_request_duration_seconds": "histogram",
    "meshlb_tokens": "counter",
    "meshlb_tasks": "gauge",
    "meshlb_members": "gauge",
    "meshlb_placements": "counter",
    "meshlb_model_loads": "counter",
    "meshlb_gossip_packets_dropped": "counter",
    "meshlb_ollama_up": "gauge",
    "meshlb_quorum": "gauge",
    "meshlb_queue_depth": "gauge",
    "meshlb_queue_max": "gauge",
}


@dataclass
class Mesh:
    a: Proc
    b: Proc


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with (
        sim_ollama("--load-ms", "300", tokens_per_second=400) as sim_a,
        sim_ollama(models="nomic-embed-text", tokens_per_second=400) as sim_b,
        meshlb_node(sim_a.url, node_id="a") as a,
        meshlb_node(sim_b.url, "--join", f"127.0.0.1:{a.extra['gossip_port']}", node_id="b") as b,
    ):
        wait_until(lambda: alive_ids(a) == {"a", "b"} == alive_ids(b), 20, "a and b joined")
        wait_until(
            lambda: any(
                p["id"] == "a" and MODEL in p["models"]
                for p in httpx.get(f"{b.url}/v1/peers").json()
            ),
            20,
            "b sees a's models",
        )
        yield Mesh(a, b)


def scrape(node: Proc) -> tuple[str, dict[str, tuple[str, list[Sample]]]]:
    text = httpx.get(f"{node.url}/metrics", timeout=5).text
    return text, {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def do_work(mesh: Mesh) -> None:
    a, b = mesh.a.url, mesh.b.url
    gen = {"model": MODEL, "prompt": "hello there", "options": {"num_predict": 6}}
    for _ in range(3):
        assert httpx.post(f"{a}/api/generate", json={**gen, "stream": False}).status_code == 200
    for _ in range(2):
        with httpx.stream("POST", f"{a}/api/generate", json=gen) as r:
            assert r.status_code == 200 and r.read()
    r = httpx.post(f"{a}/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    assert r.status_code == 200
    assert httpx.post(f"{a}/api/generate", json={"model": "no-such-model"}).status_code == 404
    r = httpx.post(f"{b}/api/generate", json={**gen, "stream": False})
    assert r.status_code == 200 and r.headers["x-meshlb-node"] == "a"  # forwarded
    task = httpx.post(
        f"{a}/v1/tasks",
        json={"kind": "generate", "model": MODEL, "request": {**gen, "stream": False}},
    ).json()
    done = httpx.get(f"{a}/v1/tasks/{task['id']}", params={"wait": 20}, timeout=30).json()
    assert done["state"] == "succeeded"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a packet to drop
        s.sendto(b"\x00garbage", ("127.0.0.1", int(str(mesh.a.extra["gossip_port"]))))


def test_every_family_with_its_type_and_values_that_moved(mesh: Mesh) -> None:
    _, before = scrape(mesh.a)
    for name, kind in FAMILIES.items():
        assert name in before, f"{name} missing from /metrics"
        assert before[name][0] == kind, f"{name} is a {before[name][0]}, not a {kind}"
    do_work(mesh)
    text, after = scrape(mesh.a)

    def moved(family: str, sample: str, **labels: str) -> float:
        old = value(before[family][1], sample, **labels)
        new = value(after[family][1], sample, **labels)
        assert new > old, f"{sample}{labels} did not move: {old} -> {new}"
        return new - old

    assert moved("meshlb_requests", "meshlb_requests_total", route="/api/generate", status="200")
    assert moved("meshlb_requests", "meshlb_requests_total", route="/api/generate", status="404")
    assert moved("meshlb_requests", "meshlb_requests_total", route="/v1/tasks", status="202")
    for hist in (
        "meshlb_queue_wait_seconds",
        "meshlb_time_to_first_token_seconds",
        "meshlb_request_duration_seconds",
    ):
        # 3 + 2 here, 1 forwarded from b (the async task runs on the task worker)
        assert moved(hist, f"{hist}_count", model=MODEL) >= 6
        assert value(after[hist][1], f"{hist}_bucket", model=MODEL, le="+Inf") == value(
            after[hist][1], f"{hist}_count", model=MODEL
        )
    ttft = value(
        after["meshlb_time_to_first_token_seconds"][1], "meshlb_time_to_first_token_seconds_sum"
    )
    assert ttft > 0.3  # the cold load is in the first answer's time to first token
    assert moved("meshlb_tokens", "meshlb_tokens_total", kind="prompt")
    assert moved("meshlb_tokens", "meshlb_tokens_total", kind="completion") >= 6 * 6
    assert moved("meshlb_tasks", "meshlb_tasks", state="succeeded") == 1
    assert moved("meshlb_placements", "meshlb_placements_total", decision="local") >= 5
    assert moved("meshlb_model_loads", "meshlb_model_loads_total", model=MODEL) == 1
    assert moved("meshlb_gossip_packets_dropped", "meshlb_gossip_packets_dropped_total")
    gauges = {n: after[n][1] for n in FAMILIES if FAMILIES[n] == "gauge"}
    assert value(gauges["meshlb_members"], "meshlb_members", state="alive") == 2
    assert value(gauges["meshlb_members"], "meshlb_members", state="dead") == 0
    assert value(gauges["meshlb_ollama_up"], "meshlb_ollama_up") == 1
    assert value(gauges["meshlb_quorum"], "meshlb_quorum") == 1
    assert value(gauges["meshlb_queue_depth"], "meshlb_queue_depth") == 0
    assert value(gauges["meshlb_queue_max"], "meshlb_queue_max") == 1000
    # A gauge never ends in _total (SPEC), and every counter does.
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert not (kind == "gauge" and name.endswith("_total")), line

    _, b = scrape(mesh.b)
    assert value(b["meshlb_placements"][1], "meshlb_placements_total", decision="forwarded") >= 1
    assert value(b["meshlb_requests"][1], "meshlb_requests_total", route="/api/generate") >= 1
