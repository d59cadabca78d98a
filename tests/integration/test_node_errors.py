"""Bad input gets a clear error, never a 500, and the node stays healthy (real processes)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.procs import Proc, free_port, meshlb_node, sim_ollama

pytestmark = pytest.mark.integration
MODEL = "llama3.2:1b"


@pytest.fixture(scope="module")
def node() -> Iterator[Proc]:
    with sim_ollama(tokens_per_second=500) as sim, meshlb_node(sim.url, "--max-queue", "50") as n:
        yield n


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/api/generate", b"{oops", 400, "invalid JSON"),
        ("/api/chat", b"[]", 400, "JSON object"),
        ("/api/generate", b'{"prompt": "x"}', 400, "model is required"),
        ("/api/generate", b'{"model": "nope:7b", "prompt": "x"}', 404, "model 'nope:7b' not found"),
        ("/api/generate", b'{"model": "llama3.2:1b", "stream": "yes"}', 400, "stream"),
        ("/v1/tasks", b'{"kind": "generate"}', 400, "model"),
        ("/v1/tasks", b'{"kind": "dance", "model": "llama3.2:1b"}', 400, "kind"),
        (
            "/v1/tasks",
            b'{"kind": "generate", "model": "llama3.2:1b", "priority": 11}',
            422,
            "priority",
        ),
        (
            "/v1/tasks",
            b'{"kind": "generate", "model": "llama3.2:1b", "timeout_s": -1}',
            422,
            "timeout_s",
        ),
        ("/v1/tasks", b'{"kind": "generate", "model": "ghost"}', 404, "not found"),
        (
            "/v1/tasks",
            b'{"kind": "generate", "model": "llama3.2:1b", "request": {"seed": 1'
            + b"0" * 30
            + b"}}",
            422,
            "too large",
        ),
    ],
)
def test_bad_bodies(node: Proc, path: str, body: bytes, status: int, fragment: str) -> None:
    r = httpx.post(node.url + path, content=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_priority_header_out_of_range_is_422(node: Proc) -> None:
    r = httpx.post(
        f"{node.url}/api/generate",
        headers={"X-Meshlb-Priority": "0"},
        json={"model": MODEL, "prompt": "x"},
    )
    assert r.status_code == 422 and "1 to 10" in r.json()["error"]


def test_huge_body_is_413_without_reading_it_all(node: Proc) -> None:
    def body() -> Iterator[bytes]:
        chunk = b"x" * (1 << 20)
        for _ in range(64):  # 64 MiB offered, limit is 32 MiB
            yield chunk

    try:
        r = httpx.post(f"{node.url}/api/generate", content=body(), timeout=30)
    except httpx.HTTPError:
        pass  # the server may close the connection after answering 413 early
    else:
        assert r.status_code == 413
        assert "larger than the limit" in r.json()["error"]
    # A declared Content-Length over the limit is refused before any body byte is read.
    raw = socket.create_connection(("127.0.0.1", int(node.url.rsplit(":", 1)[1])))
    raw.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
    answer = raw.recv(4096).decode()
    raw.close()
    assert answer.startswith("HTTP/1.1 413")


def test_unknown_task_and_paths(node: Proc) -> None:
    r = httpx.get(f"{node.url}/v1/tasks/t-doesnotexist")
    assert r.status_code == 404 and "not found" in r.json()["error"]
    assert httpx.delete(f"{node.url}/v1/tasks/t-nope").status_code == 404
    r = httpx.get(f"{node.url}/api/nothing")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]
    assert httpx.get(f"{node.url}/v1/tasks/x", params={"wait": "soon"}).status_code == 400


def test_node_is_healthy_after_bad_input(node: Proc) -> None:
    for _ in range(20):
        httpx.post(f"{node.url}/api/chat", content=b"\x00\xff garbage")
    r = httpx.post(
        f"{node.url}/api/generate",
        json={"model": MODEL, "prompt": "ok", "stream": False, "options": {"num_predict": 2}},
    )
    assert r.status_code == 200 and r.json()["done"] is True, (r.status_code, r.text)
    log = node.log()
    assert "unhandled error" not in log, log[-3000:]


def test_backend_down_is_503_with_sentence_and_node_stays_up() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with meshlb_node(dead, node_id="lonely") as n:
        r = httpx.post(f"{n.url}/api/generate", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 503
        assert "not reachable" in r.json()["error"] and "retry-after" in r.headers
        ready = httpx.get(f"{n.url}/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert httpx.get(f"{n.url}/healthz").status_code == 200


def test_backend_dies_mid_stream_ends_with_error_object() -> None:
    with (
        sim_ollama("--die-mid-stream-rate", "1.0", tokens_per_second=200) as sim,
        meshlb_node(sim.url, node_id="fragile") as n,
    ):
        with httpx.stream(
            "POST",
            f"{n.url}/api/generate",
            json={"model": MODEL, "prompt": "x", "options": {"num_predict": 50}},
        ) as r:
            lines = [line for line in r.iter_lines() if line]
        assert '"error"' in lines[-1], lines[-3:]
        time.sleep(0.2)
        assert httpx.get(f"{n.url}/healthz").status_code == 200
