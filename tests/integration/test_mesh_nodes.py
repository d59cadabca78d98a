"""Real `meshlb node` processes forming a mesh on loopback: gossip, failure, forwarding."""

from __future__ import annotations

import contextlib
import json
import time

import httpx
import ollama
import pytest

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.auth import AUTH_HEADER, sign
from meshlb.mesh.ownership_wire import encode_batch
from meshlb.mesh.replication import TaskCopy
from meshlb.tasks.model import TaskRecord
from tests.procs import (
    Proc,
    free_gossip_port,
    free_port,
    meshlb_argv,
    meshlb_node,
    sim_ollama,
    spawn_retrying,
    wait_until,
)

pytestmark = pytest.mark.integration


def states(node: Proc) -> dict[str, tuple[str, int]]:
    peers = httpx.get(f"{node.url}/v1/peers", timeout=2).json()
    return {p["id"]: (p["state"], p["incarnation"]) for p in peers}


def test_five_nodes_converge_detect_sigkill_and_readmit_restart() -> None:
    with sim_ollama(tokens_per_second=100) as sim, contextlib.ExitStack() as stack:
        gossip_ports = [free_gossip_port() for _ in range(5)]

        def make_args(i: int) -> tuple[list[str], str]:
            http_port = free_port()
            if i != 3:  # a restarted n3 must keep its gossip port (same member)
                gossip_ports[i] = free_gossip_port()
            join = [] if i == 0 else ["--join", f"127.0.0.1:{gossip_ports[0]}"]
            args = meshlb_argv(
                "node",
                "--node-id",
                f"n{i}",
                "--http",
                f"127.0.0.1:{http_port}",
                "--gossip",
                f"127.0.0.1:{gossip_ports[i]}",
                "--ollama",
                sim.url,
                "--log-format",
                "json",
                *join,
            )
            return args, f"http://127.0.0.1:{http_port}"

        def start(i: int) -> Proc:
            return stack.enter_context(spawn_retrying(lambda: make_args(i)))

        nodes = [start(i) for i in range(5)]
        names = {f"n{i}" for i in range(5)}
        wait_until(
            lambda: all(
                {k for k, v in states(n).items() if v[0] == "alive"} == names for n in nodes
            ),
            15,
            "5 nodes see each other alive",
        )
        old_incarnation = states(nodes[0])["n3"][1]
        nodes[3].kill()
        survivors = [n for i, n in enumerate(nodes) if i != 3]
        took = wait_until(
            lambda: all(states(n)["n3"][0] == "dead" for n in survivors),
            20,
            "every survivor marks n3 dead",
        )
        print(f"SIGKILL -> dead at all survivors in {took:.1f}s")
        restarted = start(3)
        wait_until(
            lambda: all(
                states(n).get("n3", ("", 0))[0] == "alive" for n in [*survivors, restarted]
            ),
            20,
            "restarted n3 alive everywhere",
        )
        assert states(nodes[0])["n3"][1] > old_incarnation


def test_request_for_a_model_only_a_peer_has_streams_through_the_first_node() -> None:
    """Official ollama client streaming through node A while the task runs on node B."""
    with (
        sim_ollama(models="llama3.2:1b", tokens_per_second=200) as sim_a,
        sim_ollama(models="qwen2.5:0.5b", tokens_per_second=200) as sim_b,
        meshlb_node(sim_a.url, node_id="a") as a,
    ):
        seed = f"127.0.0.1:{a.extra['gossip_port']}"
        with meshlb_node(sim_b.url, "--join", seed, node_id="b") as b:
            wait_until(
                lambda: (
                    "qwen2.5:0.5b"
                    in [m["name"] for m in httpx.get(f"{a.url}/api/tags").json()["models"]]
                ),
                15,
                "a lists b's model",
            )
            client = ollama.Client(host=a.url)
            parts = list(
                client.chat(
                    model="qwen2.5:0.5b",
                    stream=True,
                    messages=[{"role": "user", "content": "hi"}],
                    options={"num_predict": 12},
                )
            )
            assert parts[-1].done and parts[-1].eval_count == 12
            r = httpx.post(
                f"{a.url}/api/generate",
                json={
                    "model": "qwen2.5:0.5b",
                    "prompt": "x",
                    "stream": False,
                    "options": {"num_predict": 3},
                },
            )
            assert r.status_code == 200 and r.headers["x-meshlb-node"] == "b"
            # Metadata for the whole mesh: b's model is shown and listed as loaded via a.
            shown = httpx.post(f"{a.url}/api/show", json={"model": "qwen2.5:0.5b"})
            assert shown.status_code == 200 and "details" in shown.json(), shown.text
            httpx.post(
                f"{a.url}/api/generate",
                json={"model": "llama3.2:1b", "prompt": "x", "stream": False},
            )
            loaded = {m["name"] for m in client.ps().models}
            assert {"qwen2.5:0.5b", "llama3.2:1b"} <= loaded, loaded
            local_ps = httpx.get(f"{a.url}/api/ps", params={"local": "1"}).json()
            assert {m["name"] for m in local_ps["models"]} == {"llama3.2:1b"}
            assert httpx.get(f"{a.url}/v1/queue").json()["node_counters"]["forwarded"] >= 2
            task = httpx.post(
                f"{b.url}/v1/tasks",
                json={
                    "kind": "generate",
                    "model": "qwen2.5:0.5b",
                    "request": {"prompt": "x", "options": {"num_predict": 3}},
                },
            ).json()
            seen_from_a = httpx.get(
                f"{a.url}/v1/tasks/{task['id']}", params={"wait": 10}, timeout=15
            )
            assert seen_from_a.status_code == 200, seen_from_a.text
            assert seen_from_a.json()["state"] == "succeeded"
            assert seen_from_a.json()["origin"] == "b"
            assert httpx.get(f"{a.url}/v1/tasks/t-unknown").status_code == 404
            missing = httpx.post(f"{a.url}/api/generate", json={"model": "nowhere:1b"})
            assert missing.status_code == 404
            b.kill()
            b.popen.wait(5)
            # b is gone (SIGKILL): before gossip notices, A tries b, fails, and answers 503.
            r = httpx.post(
                f"{a.url}/api/generate",
                json={"model": "qwen2.5:0.5b", "prompt": "x", "stream": False},
            )
            assert r.status_code in (503, 404), r.text
            assert r.status_code == 404 or "retry-after" in r.headers


def forged_copy() -> TaskCopy:
    record = TaskRecord("t-forged", "generate", "llama3.2:1b", {}, 5, "intruder", time.time())
    return TaskCopy(record, "intruder", 1, ("k",))


def test_cluster_key_refuses_unauthenticated_peer_requests() -> None:
    with (
        sim_ollama(tokens_per_second=200) as sim,
        meshlb_node(sim.url, "--cluster-key", "s3cret-key-for-tests", node_id="k") as n,
    ):
        r = httpx.post(
            f"{n.url}/api/generate",
            headers={"x-meshlb-hops": "1"},
            json={"model": "llama3.2:1b", "prompt": "x", "stream": False},
        )
        assert r.status_code == 401 and "refused" in r.json()["error"]
        ok = httpx.post(
            f"{n.url}/api/generate",
            json={
                "model": "llama3.2:1b",
                "prompt": "x",
                "stream": False,
                "options": {"num_predict": 2},
            },
        )
        assert ok.status_code == 200
        # The ownership endpoint: a well-formed batch without the key does nothing.
        batch = encode_batch("intruder", "b0", [m.Send("k", m.Replicate(forged_copy()))])
        path = "/v1/internal/ownership"
        for headers in (
            {},
            {AUTH_HEADER: sign("wrong-key-entirely", "POST", path, batch, time.time())},
            {AUTH_HEADER: sign("s3cret-key-for-tests", "POST", path, batch, time.time() - 600)},
        ):
            refused = httpx.post(f"{n.url}{path}", content=batch, headers=headers)
            assert refused.status_code == 401, refused.text
        signed = {AUTH_HEADER: sign("s3cret-key-for-tests", "POST", path, b"junk", time.time())}
        garbage = httpx.post(f"{n.url}{path}", content=b"junk", headers=signed)
        assert garbage.status_code == 400 and "malformed" in garbage.json()["error"]
        assert httpx.get(f"{n.url}/v1/tasks/t-forged").status_code == 404
        assert httpx.get(f"{n.url}/v1/queue").json()["mesh"]["copies"] == 0


def test_signed_peer_requests_cannot_be_replayed_or_altered() -> None:
    """Issue 15, defect 6: a captured forwarded request, resent byte for byte, ran
    again; with X-Meshlb-Priority changed it was still accepted; `?local=1` reads
    were answered without a signature."""
    key = "s3cret-key-for-tests"
    with (
        sim_ollama(tokens_per_second=200) as sim,
        meshlb_node(sim.url, "--cluster-key", key, node_id="k") as n,
    ):
        body = json.dumps(
            {"model": "llama3.2:1b", "prompt": "x", "stream": False, "options": {"num_predict": 2}}
        ).encode()
        headers = {"x-meshlb-hops": "1", "x-meshlb-priority": "5"}
        captured = {
            **headers,
            "content-type": "application/json",
            AUTH_HEADER: sign(key, "POST", "/api/generate", body, time.time(), headers),
        }
        first = httpx.post(f"{n.url}/api/generate", content=body, headers=captured)
        assert first.status_code == 200, first.text
        replayed = httpx.post(f"{n.url}/api/generate", content=body, headers=captured)
        assert replayed.status_code == 401 and "used before" in replayed.json()["error"]
        fresh = sign(key, "POST", "/api/generate", body, time.time(), headers)
        altered = {**captured, AUTH_HEADER: fresh, "x-meshlb-priority": "10"}
        r = httpx.post(f"{n.url}/api/generate", content=body, headers=altered)
        assert r.status_code == 401 and "does not match" in r.json()["error"]
        unsigned = httpx.get(f"{n.url}/v1/tasks/t-abc", params={"local": "1"})
        assert unsigned.status_code == 401
        path = "/v1/tasks/t-abc?local=1"
        signed = {AUTH_HEADER: sign(key, "GET", path, b"", time.time())}
        assert httpx.get(f"{n.url}{path}", headers=signed).status_code == 404
