"""Real processes: model management through the mesh (issue 12).

Three `meshlb node`s beside three `sim-ollama`s that download at 400 MB/s. The
official `ollama` client pulls through one node and sees one monotone progress stream
ending in success; the model is then on every host and runs through every node;
`X-Meshlb-Hosts: 1` pulls to one host; delete through another node removes a model
everywhere; copy and create (from a model and from an uploaded blob) act on every
host; bad input is a clear 4xx; the CLI draws a bar per host; the npm `ollama`
package's pull works. A second mesh, one of whose sims fails every pull, shows the
failure named, a host killed mid-pull reported while the others finish, and a client
hang-up cancelling every host's pull.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.procs import Proc, alive_ids, meshlb_argv, meshlb_node, sim_ollama, wait_until

pytestmark = pytest.mark.integration
MBPS = "400"
IDS = ("m0", "m1", "m2")
KEY = "model-management-test-key"


def sim_models(sim: Proc) -> set[str]:
    return {m["name"] for m in httpx.get(f"{sim.url}/api/tags", timeout=5).json()["models"]}


def node_models(node: Proc) -> set[str]:
    return {m["name"] for m in httpx.get(f"{node.url}/api/tags", timeout=5).json()["models"]}


@contextlib.contextmanager
def mesh_of(
    sim_args: list[list[str]], ids: tuple[str, ...], *node_args: str
) -> Iterator[tuple[list[Proc], list[Proc]]]:
    with contextlib.ExitStack() as stack:
        sims = [
            stack.enter_context(sim_ollama(*a, models="llama3.2:1b,nomic-embed-text"))
            for a in sim_args
        ]
        first = stack.enter_context(meshlb_node(sims[0].url, *node_args, node_id=ids[0]))
        seed = [*node_args, "--join", f"127.0.0.1:{first.extra['gossip_port']}"]
        nodes = [first] + [
            stack.enter_context(meshlb_node(s.url, *seed, node_id=i))
            for s, i in zip(sims[1:], ids[1:], strict=True)
        ]
        wait_until(lambda: all(alive_ids(n) == set(ids) for n in nodes), 20, "nodes see each other")
        yield sims, nodes


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[list[Proc], list[Proc]]]:
    # with a cluster key: every node-to-node relay below is signed and checked
    with mesh_of([["--pull-mbps", MBPS]] * 3, IDS, "--cluster-key", KEY) as m:
        yield m


def generate(node: Proc, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
    return httpx.post(f"{node.url}/api/generate", json=body, timeout=30)


def test_official_client_pull_is_one_monotone_stream_then_model_runs_everywhere(mesh: Any) -> None:
    sims, nodes = mesh
    model = "qwen2.5:0.5b"
    assert not any(model in sim_models(s) for s in sims)
    progress = list(ollama.Client(host=nodes[0].url).pull(model, stream=True))
    assert progress[-1].status == "success", progress[-1]
    assert progress[0].status == "pulling manifest"
    layers: dict[str, list[tuple[int, int]]] = {}
    for p in progress:
        if p.digest:
            assert p.total is not None
            layers.setdefault(p.digest, []).append((p.total, p.completed or 0))
    assert len(layers) == 5, layers.keys()
    for digest, seen in layers.items():
        totals = {t for t, _ in seen}
        assert len(totals) == 1, f"{digest}: total changed {totals}"
        done = [c for _, c in seen]
        assert done == sorted(done), f"{digest}: completed went down"
        assert done[-1] == seen[-1][0], f"{digest}: ended at {done[-1]} of {seen[-1][0]}"
    weights = max(layers.values(), key=lambda s: s[0][0])
    assert len(weights) > 5, "a 0.4 GB layer at 400 MB/s reports progress several times"
    # summed over the three hosts: the weights layer is three downloads
    assert weights[0][0] > 3 * 0.39e9
    for sim in sims:
        assert model in sim_models(sim)
    # the entry node waited for gossip: its list has the model at once
    assert model in node_models(nodes[0])
    for node in nodes:

        def listed(n: Proc = node) -> bool:
            return model in node_models(n)

        wait_until(listed, 3, f"{model} listed by {node.url}")
        r = generate(node, model)
        assert r.status_code == 200, r.text


def test_count_of_one_pulls_to_one_host_only(mesh: Any) -> None:
    sims, nodes = mesh
    model = "tinyllama:latest"
    client = ollama.Client(host=nodes[1].url, headers={"X-Meshlb-Hosts": "1"})
    assert client.pull(model).status == "success"
    holders = [i for i, s in enumerate(sims) if model in sim_models(s)]
    assert len(holders) == 1, holders
    wait_until(lambda: all(model in node_models(n) for n in nodes), 3, "listed mesh-wide")
    for node in nodes:  # runs from every node: placed on the one host that has it
        r = generate(node, model)
        assert r.status_code == 200, r.text
        assert r.headers["x-meshlb-node"] == IDS[holders[0]]


def test_delete_through_another_node_removes_it_everywhere(mesh: Any) -> None:
    sims, nodes = mesh
    model = "nomic-embed-text:latest"
    assert all(model in sim_models(s) for s in sims)
    assert ollama.Client(host=nodes[1].url).delete(model).status == "success"
    assert not any(model in sim_models(s) for s in sims)
    wait_until(lambda: not any(model in node_models(n) for n in nodes), 3, "gone mesh-wide")
    r = httpx.request("DELETE", f"{nodes[2].url}/api/delete", json={"model": model}, timeout=10)
    assert r.status_code == 404 and model in r.json()["error"], r.text


def test_copy_then_create_from_model_and_from_blob(mesh: Any, tmp_path: Path) -> None:
    sims, nodes = mesh
    client = ollama.Client(host=nodes[2].url)
    assert client.copy("llama3.2:1b", "team/mine:v1").status == "success"
    assert all("team/mine:v1" in sim_models(s) for s in sims)
    last = list(
        client.create(model="team/custom", from_="team/mine:v1", system="Be brief.", stream=True)
    )
    assert last[-1].status == "success", last
    assert all("team/custom:latest" in sim_models(s) for s in sims)
    r = generate(nodes[0], "team/custom")
    assert r.status_code == 200, r.text

    blob = tmp_path / "adapter.gguf"
    blob.write_bytes(os.urandom(300_000))
    digest = client.create_blob(blob)
    assert digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert httpx.head(f"{nodes[0].url}/api/blobs/{digest}", timeout=5).status_code == 200
    for sim in sims:  # uploaded once to the node, relayed to every host
        assert httpx.head(f"{sim.url}/api/blobs/{digest}", timeout=5).status_code == 200
    assert client.create(model="from-blob", files={"adapter.gguf": digest}).status == "success"
    assert all("from-blob:latest" in sim_models(s) for s in sims)


def test_internal_relay_refuses_an_unsigned_request(mesh: Any) -> None:
    sims, nodes = mesh
    url = f"{nodes[0].url}/v1/internal/ollama/api/delete"
    r = httpx.request("DELETE", url, json={"model": "llama3.2:1b"}, timeout=10)
    assert r.status_code == 401, r.text
    assert "llama3.2:1b" in sim_models(sims[0])
    r = httpx.post(f"{nodes[0].url}/v1/internal/ollama/api/generate", json={}, timeout=10)
    assert r.status_code == 404, r.text


BAD_INPUT = [
    ("POST", "/api/pull", {}, {}, 400, "model is required"),
    ("POST", "/api/pull", {"model": "bad name!"}, {}, 400, "invalid model name"),
    ("POST", "/api/pull", {"model": 7}, {}, 400, "must be a string"),
    ("POST", "/api/pull", {"model": "tinyllama", "stream": "yes"}, {}, 400, "stream"),
    ("POST", "/api/pull", {"model": "tinyllama"}, {"X-Meshlb-Hosts": "m1,nope"}, 400, "nope"),
    ("POST", "/api/pull", {"model": "tinyllama"}, {"X-Meshlb-Hosts": "4"}, 422, "only 3"),
    ("POST", "/api/pull", {"model": "tinyllama"}, {"X-Meshlb-Hosts": "0"}, 400, "at least 1"),
    ("POST", "/api/pull", {"model": "tinyllama"}, {"X-Meshlb-Hosts": "m1,,m2"}, 400, "X-Meshlb"),
    ("DELETE", "/api/delete", {"model": "never-pulled"}, {}, 404, "not found"),
    ("DELETE", "/api/delete", {"name": ""}, {}, 400, "model is required"),
    ("POST", "/api/copy", {"source": "never-pulled", "destination": "x"}, {}, 404, "not found"),
    ("POST", "/api/copy", {"source": "llama3.2:1b", "destination": "a b"}, {}, 400, "destination"),
    (
        "POST",
        "/api/create",
        {"model": "x", "from": "llama3.2:1b"},
        {"X-Meshlb-Hosts": "zz"},
        400,
        "zz",
    ),
    ("POST", "/api/push", {"model": "never-pulled"}, {}, 404, "not found"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "says"), BAD_INPUT)
def test_bad_input_is_a_clear_4xx(
    mesh: Any, method: str, path: str, body: Any, headers: Any, status: int, says: str
) -> None:
    _, nodes = mesh
    r = httpx.request(method, f"{nodes[0].url}{path}", json=body, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    assert says in r.json()["error"], r.text


def test_blob_with_wrong_digest_and_unknown_pull_name(mesh: Any) -> None:
    _, nodes = mesh
    wrong = "sha256:" + "0" * 64
    r = httpx.post(f"{nodes[0].url}/api/blobs/{wrong}", content=b"data", timeout=10)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"], r.text
    r = httpx.post(f"{nodes[0].url}/api/blobs/sha256:xyz", content=b"data", timeout=10)
    assert r.status_code == 400 and "digest" in r.json()["error"], r.text
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=nodes[0].url).pull("no-such-model-anywhere")
    assert "file does not exist" in str(raised.value)
    assert all(h in str(raised.value) for h in IDS)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(meshlb_argv(*args), capture_output=True, text=True, timeout=60)


def test_cli_pull_rm_cp(mesh: Any) -> None:
    sims, nodes = mesh
    model = "gemma3:1b"
    done = run_cli("pull", model, "--hosts", "m0,m2", "--node", nodes[1].url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "m0" in done.stdout and "m2" in done.stdout and "total" in done.stdout
    assert "pulled gemma3:1b to m0, m2" in done.stdout
    assert [model in sim_models(s) for s in sims] == [True, False, True]
    done = run_cli("cp", model, "gem:copy", "--node", nodes[0].url)
    assert done.returncode == 0 and "m0,m2" in done.stdout, done.stdout + done.stderr
    done = run_cli("rm", "gem:copy", "--node", nodes[1].url)
    assert done.returncode == 0 and "m0,m2" in done.stdout, done.stdout + done.stderr
    assert not any("gem:copy" in sim_models(s) for s in sims)

    bad = run_cli("pull", model, "--hosts", "zz", "--node", nodes[0].url)
    assert bad.returncode == 1 and "zz" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("rm", "never-pulled", "--node", nodes[0].url)
    assert bad.returncode == 1 and "not found" in bad.stderr, bad.stderr
    bad = run_cli("pull", "no-such-model-anywhere", "--node", nodes[0].url)
    assert bad.returncode == 1 and "file does not exist" in bad.stderr, bad.stderr
    bad = run_cli("pull", model, "--node", "http://127.0.0.1:9")
    assert bad.returncode == 1 and "cannot reach" in bad.stderr, bad.stderr


NPM_DIR = Path(os.environ.get("MESHLB_NPM_DIR", Path.home() / ".cache/meshlb-tests/npm"))
NPM_SCRIPT = """
import { Ollama } from 'ollama';
const client = new Ollama({ host: process.argv[2] });
const seen = [];
for await (const part of await client.pull({ model: process.argv[3], stream: true })) {
  seen.push(part);
}
console.log(JSON.stringify(seen));
"""


def npm_ollama() -> Path:
    """The npm `ollama` package installed under NPM_DIR (installed once), or skip."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed (apt-get install nodejs npm)")
    if not (NPM_DIR / "node_modules" / "ollama").is_dir():
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                [
                    "npm",
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    str(NPM_DIR),
                    "ollama@0.6",
                ],
                capture_output=True,
                timeout=180,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"npm could not install the ollama package: {e}")
    script = NPM_DIR / "pull.mjs"
    script.write_text(NPM_SCRIPT)
    return script


def test_npm_ollama_package_pull(mesh: Any) -> None:
    sims, nodes = mesh
    script = npm_ollama()
    model = "qwen3:0.6b"
    done = subprocess.run(
        ["node", str(script), nodes[2].url, model], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen[-1] == {"status": "success"}
    assert any(p.get("completed") for p in seen)
    assert all(model in sim_models(s) for s in sims)


def test_failing_host_named_dead_host_reported_hang_up_cancels() -> None:
    slow = ["--pull-mbps", "100"]
    with mesh_of([slow, [*slow, "--fail-pulls"], slow], ("f0", "f1", "f2")) as (sims, nodes):
        model = "qwen2.5:0.5b"  # 0.4 GB: 4 s at 100 MB/s
        # a client that hangs up after the first progress cancels every host's pull
        with httpx.stream(
            "POST", f"{nodes[0].url}/api/pull", json={"model": model}, timeout=30
        ) as r:
            lines = r.iter_lines()
            assert '"completed"' in next(line for line in lines if '"completed"' in line)
        time.sleep(5)
        assert not any(model in sim_models(s) for s in sims), "a pull went on after the hang-up"

        # one host's Ollama fails, another host's node dies mid-pull: both named, f0 finishes
        errors: list[str] = []

        def pull() -> None:
            try:
                ollama.Client(host=nodes[0].url).pull(model)
            except ollama.ResponseError as e:
                errors.append(str(e))

        puller = threading.Thread(target=pull)
        puller.start()
        time.sleep(1.0)
        nodes[2].kill()
        puller.join(30)
        assert len(errors) == 1, errors
        assert "f1" in errors[0] and "simulated connection reset" in errors[0], errors[0]
        assert "f2" in errors[0] and "stopped answering" in errors[0], errors[0]
        assert "succeeded on f0" in errors[0], errors[0]
        assert model in sim_models(sims[0]) and model not in sim_models(sims[1])
