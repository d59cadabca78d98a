"""A node survives the death of a peer that held its async tasks (a KeyError in the
orphan registry, re-entered through the fence, used to kill the survivor)."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.procs import alive_ids, meshlb_node, sim_ollama, wait_until

pytestmark = pytest.mark.integration


def test_the_survivor_takes_over_and_stays_up() -> None:
    with (
        sim_ollama(tokens_per_second=40) as sa,
        sim_ollama(tokens_per_second=40) as sb,
        meshlb_node(sa.url, node_id="ta") as a,
        meshlb_node(sb.url, "--join", f"127.0.0.1:{a.extra['gossip_port']}", node_id="tb") as b,
    ):
        wait_until(lambda: alive_ids(a) == {"ta", "tb"}, 20, "a sees b")
        ids = []
        with httpx.Client(timeout=20) as client:
            for i in range(8):
                body = {
                    "kind": "generate",
                    "model": "llama3.2:1b",
                    "request": {"prompt": f"orphan {i}", "options": {"num_predict": 400}},
                }
                r = client.post(f"{b.url}/v1/tasks", json=body)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            time.sleep(1)
            b.kill(signal.SIGKILL)
            wait_until(lambda: "tb" not in alive_ids(a), 20, "a sees b dead")
            time.sleep(4)
            assert a.popen.poll() is None, a.log()[-3000:]
            for t in ids:
                r = client.get(f"{a.url}/v1/tasks/{t}", params={"wait": 30})
                assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
        assert "Traceback" not in a.log()
