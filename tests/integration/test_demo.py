"""`meshlb demo`: the newcomer's first command starts a working mesh and stops it all."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

import httpx
import psutil
import pytest

from tests.procs import meshlb_argv

pytestmark = pytest.mark.integration


def test_demo_starts_a_mesh_that_answers_and_stops_everything_on_sigterm() -> None:
    demo = subprocess.Popen(
        meshlb_argv("demo", "--nodes", "2", "--no-live"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        urls: list[str] = []
        deadline = time.monotonic() + 40
        assert demo.stdout is not None
        while time.monotonic() < deadline and len(urls) < 2:
            line = demo.stdout.readline()
            if "dashboard" in line:
                urls.append(line.split()[1])
        assert len(urls) == 2, "demo did not print two node URLs"
        peers = []
        for _ in range(50):
            peers = httpx.get(f"{urls[0]}/v1/peers").json()
            if len([p for p in peers if p["state"] == "alive"]) == 2:
                break
            time.sleep(0.2)
        assert {p["id"] for p in peers} == {"node1", "node2"}
        r = httpx.post(
            f"{urls[1]}/api/generate",
            json={
                "model": "llama3.2:1b",
                "prompt": "hi",
                "stream": False,
                "options": {"num_predict": 3},
            },
        )
        assert r.status_code == 200 and r.json()["eval_count"] == 3
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) == 4  # two nodes, two simulated Ollamas

        # a node killed by hand: the demo stays up, says so, restarts it, it rejoins
        node2 = next(
            c for c in children if "node2" in " ".join(c.cmdline()) and "node" in c.cmdline()
        )
        node2.kill()
        said = []
        while time.monotonic() < deadline + 30 and not any("restarted" in x for x in said):
            said.append(demo.stdout.readline())
        assert any("node2 exited" in x for x in said), said
        assert any("node2 restarted" in x for x in said), said
        assert demo.poll() is None
        rejoined = False
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                states = {p["id"]: p["state"] for p in httpx.get(f"{urls[0]}/v1/peers").json()}
                if states.get("node2") == "alive" and httpx.get(f"{urls[1]}/healthz").is_success:
                    rejoined = True
                    break
            time.sleep(0.2)
        assert rejoined, "node2 did not rejoin after its restart"
        children = psutil.Process(demo.pid).children(recursive=True)
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(20)
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != "zombie"]
