"""Issue 9's single-node defects, each against a real node process (loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.procs import Proc, free_gossip_port, free_port, meshlb_argv, meshlb_node, sim_ollama

pytestmark = pytest.mark.integration
MODEL = "llama3.2:1b"


@pytest.fixture(scope="module")
def node() -> Iterator[Proc]:
    with sim_ollama(tokens_per_second=400) as sim, meshlb_node(sim.url, node_id="d1") as n:
        yield n


def counters(node: Proc) -> dict[str, int]:
    return dict(httpx.get(f"{node.url}/v1/queue", timeout=5).json()["node_counters"])


def test_completed_requests_are_not_counted_as_client_disconnects(node: Proc) -> None:
    """Defect 6: a complete answer (streamed or not) is no hang-up."""
    before = counters(node).get("client_disconnects", 0)
    for stream in (False, True, False, True):
        body = {"model": MODEL, "prompt": "hi", "stream": stream, "options": {"num_predict": 4}}
        r = httpx.post(f"{node.url}/api/generate", json=body, timeout=10)
        assert r.status_code == 200
    time.sleep(0.3)
    assert counters(node).get("client_disconnects", 0) == before
    assert "client disconnected, task cancelled" not in node.log()


def test_a_real_hang_up_is_counted(node: Proc) -> None:
    before = counters(node).get("client_disconnects", 0)
    body = {"model": MODEL, "prompt": "hi", "options": {"num_predict": 2000}}
    with httpx.stream("POST", f"{node.url}/api/generate", json=body, timeout=10) as r:
        next(r.iter_lines())  # the answer began; now hang up
    deadline = time.monotonic() + 5
    while counters(node).get("client_disconnects", 0) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counters(node).get("client_disconnects", 0) == before + 1


def test_openai_paths_answer_errors_in_openai_shape(node: Proc) -> None:
    """Defect 7: the `openai` client shows the message, not only 'Error code: 404'."""
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="ghost:1b", messages=[{"role": "user", "content": "hi"}]
        )
    assert "model 'ghost:1b' not found" in str(caught.value)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "not_found_error"
    r = httpx.post(f"{node.url}/v1/chat/completions", content=b"{oops")
    err = r.json()["error"]
    assert r.status_code == 400 and err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}
    # meshlb's own API keeps SPEC's {"error": sentence}
    assert isinstance(httpx.get(f"{node.url}/v1/tasks/t-nope").json()["error"], str)


def test_openai_model_endpoint(node: Proc) -> None:
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ghost:1b")


def test_timeout_header_ends_a_request_with_504() -> None:
    """Defect 8: a request past its X-Meshlb-Timeout-S gets 504, or an error object."""
    with sim_ollama(tokens_per_second=20) as sim, meshlb_node(sim.url, node_id="t1") as n:
        body = {"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 200}}
        started = time.monotonic()
        r = httpx.post(
            f"{n.url}/api/generate", json=body, headers={"X-Meshlb-Timeout-S": "0.5"}, timeout=20
        )
        assert r.status_code == 504 and "timeout of 0.5 s" in r.json()["error"]
        assert time.monotonic() - started < 3
        body["stream"] = True
        with httpx.stream(
            "POST",
            f"{n.url}/api/generate",
            json=body,
            headers={"X-Meshlb-Timeout-S": "1"},
            timeout=20,
        ) as s:
            lines = [json.loads(line) for line in s.iter_lines() if line]
        assert s.status_code == 200 and "timeout" in lines[-1]["error"]
        bad = httpx.post(f"{n.url}/api/generate", json=body, headers={"X-Meshlb-Timeout-S": "-1"})
        assert bad.status_code == 422


def test_request_timeout_flag_is_the_default_deadline() -> None:
    with (
        sim_ollama(tokens_per_second=20) as sim,
        meshlb_node(sim.url, "--request-timeout-s", "0.5", node_id="t2") as n,
    ):
        body = {"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 200}}
        r = httpx.post(f"{n.url}/api/generate", json=body, timeout=20)
        assert r.status_code == 504


def run_node_expecting_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshlb_argv("node", "--node-id", "x", "--log-format", "json", *args),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("which", ["http", "gossip"])
def test_a_port_in_use_is_one_sentence_and_exit_1(which: str) -> None:
    """Defect 4: no ExceptionGroup traceback; one sentence naming the address."""
    http, gossip = free_port(), free_gossip_port()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys,time\n"
            "kind = socket.SOCK_STREAM if sys.argv[1] == 'http' else socket.SOCK_DGRAM\n"
            "s = socket.socket(socket.AF_INET, kind); s.bind(('127.0.0.1', int(sys.argv[2])))\n"
            "kind == socket.SOCK_STREAM and s.listen(); print('ok', flush=True); time.sleep(60)",
            which,
            str(http if which == "http" else gossip),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        done = run_node_expecting_exit(
            "--http", f"127.0.0.1:{http}", "--gossip", f"127.0.0.1:{gossip}"
        )
    finally:
        holder.kill()
        holder.wait()
    port = http if which == "http" else gossip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr
    assert f"127.0.0.1:{port}: already in use" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "gossip started" not in done.stdout + done.stderr


def test_ready_is_logged_only_when_true() -> None:
    """Defect 5: with Ollama down the log says "node not ready" and why, never "ready"."""
    with meshlb_node(f"http://127.0.0.1:{free_port()}", node_id="r1") as n:
        deadline = time.monotonic() + 5
        while '"node not ready"' not in n.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = n.log()
        assert '"node not ready"' in log and "Ollama" in log
        assert '"event": "node ready"' not in log
        assert httpx.get(f"{n.url}/readyz").status_code == 503
