"""`meshlb top | peers | stats` against a real two-node mesh, at 80 columns and wide.

Also `top` in a pseudo-terminal: q quits with exit 0 at once, an unreachable node is
said so on screen and retried until it answers; without a TTY, Ctrl-C ends it with 0
and no traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.procs import (
    Proc,
    free_gossip_port,
    free_port,
    meshlb_argv,
    meshlb_node,
    sim_ollama,
    spawn,
    wait_until,
)

pytestmark = pytest.mark.integration

LONG_ID = "gpu-node-in-rack-seventeen-number-0042"
ENV_80 = {**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "xterm"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[Proc, Proc]]:
    """Node A (a long id) and node B joined to it, each beside a slow simulated Ollama."""
    with (
        sim_ollama(tokens_per_second=20) as sim_a,
        sim_ollama(tokens_per_second=20) as sim_b,
        meshlb_node(sim_a.url, node_id=LONG_ID) as a,
        meshlb_node(sim_b.url, "--join", f"127.0.0.1:{a.extra['gossip_port']}", node_id="b") as b,
    ):
        wait_until(
            lambda: sum(p["state"] == "alive" for p in httpx.get(f"{a.url}/v1/peers").json()) == 2,
            20,
            "both members alive as A sees them",
        )
        yield a, b


def meshlb(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshlb_argv(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV_80, "COLUMNS": str(columns)},
        stdin=subprocess.DEVNULL,
    )


def assert_fits(out: str, width: int = 80) -> None:
    too_long = [line for line in out.splitlines() if len(line) > width]
    assert not too_long, f"lines over {width} columns:\n" + "\n".join(too_long)


def test_top_once_shows_the_mesh_in_80_columns_with_a_running_task(
    mesh: tuple[Proc, Proc],
) -> None:
    a, _ = mesh
    task = httpx.post(
        f"{a.url}/v1/tasks",
        json={
            "kind": "generate",
            "model": "llama3.2:1b",
            "priority": 3,
            "request": {"prompt": "a long story", "options": {"num_predict": 400}},
        },
    ).json()
    wait_until(
        lambda: httpx.get(f"{a.url}/v1/tasks/{task['id']}").json()["state"] == "running",
        15,
        "the task running",
    )
    out = meshlb("top", "--once", "--node", a.url)
    assert out.returncode == 0, out.stderr
    assert_fits(out.stdout)
    lines = out.stdout.splitlines()
    assert any(line.lstrip().startswith("gpu-nod…") and " alive " in line for line in lines)
    assert any(line.lstrip().startswith("b ") and " alive " in line for line in lines)
    assert "2/2 live" in out.stdout and re.search(r"running 1/\d+ ", out.stdout)
    assert task["id"] in out.stdout, "the running task is listed"
    assert "q quits" not in out.stdout, "--once is not interactive"
    assert not re.search(r"\d\.\d{3,}", out.stdout), "figures are rounded"


def test_peers_fits_80_columns_without_cutting_names(mesh: tuple[Proc, Proc]) -> None:
    a, b = mesh
    out = meshlb("peers", "--node", a.url)
    assert out.returncode == 0, out.stderr
    assert_fits(out.stdout)
    assert "…" not in out.stdout, "wrapped, not cut"
    assert re.search(r" nomic-embed-text *$", out.stdout, re.M), "a whole model name per line"
    assert re.search(r" llama3\.2:1b *$", out.stdout, re.M)
    assert b.url.removeprefix("http://") in out.stdout, "the full address of b"
    assert LONG_ID not in out.stdout, "a long id wraps onto a second line at 80 columns"


def test_peers_wide_shows_every_id_and_address_whole_on_one_line(
    mesh: tuple[Proc, Proc],
) -> None:
    a, b = mesh
    out = meshlb("peers", "--wide", "--node", a.url)
    assert out.returncode == 0, out.stderr
    row_a = next(line for line in out.stdout.splitlines() if LONG_ID in line)
    assert a.url.removeprefix("http://") in row_a
    assert f"127.0.0.1:{a.extra['gossip_port']}" in row_a
    assert "llama3.2:1b, nomic-embed-text" in row_a
    assert any(b.url.removeprefix("http://") in line for line in out.stdout.splitlines())
    assert max(len(line) for line in out.stdout.splitlines()) > 80, "not squeezed to 80"


def test_stats_are_tables_with_units_and_rounded_figures(mesh: tuple[Proc, Proc]) -> None:
    a, _ = mesh
    httpx.post(
        f"{a.url}/api/generate",
        json={"model": "llama3.2:1b", "prompt": "hi", "stream": False},
        timeout=30,
    )
    out = meshlb("stats", "--node", a.url)
    assert out.returncode == 0, out.stderr
    assert_fits(out.stdout)
    text = out.stdout
    assert f"node {LONG_ID}: queue and capacity" in text
    assert re.search(r"priority aging +30 s", text) and re.search(r"busy backoff +10 s", text)
    assert re.search(r"p50 +(<1|\d+(\.\d)?) (ms|s)", text), "wait times with a unit"
    assert "mesh totals" in text and "2 live of 2" in text and "tokens/s" in text
    assert "requests/min" in text and "/∞" in text
    assert not re.search(r"\d\.\d{3,}", text), "no unrounded floats"
    assert "{" not in text and "_" not in text.replace(LONG_ID, ""), "no raw dicts or keys"


def test_stats_json_is_the_nodes_raw_json(mesh: tuple[Proc, Proc]) -> None:
    a, _ = mesh
    out = meshlb("stats", "--json", "--node", a.url)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    queue = httpx.get(f"{a.url}/v1/queue").json()
    assert data["queue"]["node"] == LONG_ID and data["queue"].keys() == queue.keys()
    assert data["queue"]["limits"] == queue["limits"]
    assert {n["id"] for n in data["cluster"]["nodes"]} == {LONG_ID, "b"}


def test_top_once_against_no_node_says_so_and_exits_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = meshlb("top", "--once", "--node", url)
    assert out.returncode == 1
    assert f"cannot reach {url}" in out.stdout and "Traceback" not in out.stderr


class PtyTop:
    """`meshlb top` on a pseudo-terminal of 80x24: what it drew, keys typed into it."""

    def __init__(self, url: str) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.popen = subprocess.Popen(
            meshlb_argv("top", "--node", url),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=ENV_80,
            start_new_session=True,
        )
        os.close(slave)
        self.raw = b""

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    return
                if not data:
                    return
                self.raw += data

    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", errors="replace"))

    def wait_for(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            assert time.monotonic() < deadline, f"{needle!r} not on screen:\n{self.text()[-2000:]}"
            assert self.popen.poll() is None, f"top exited:\n{self.text()[-2000:]}"
            self.pump(0.2)

    def press(self, key: str) -> None:
        os.write(self.master, key.encode())

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        with contextlib.suppress(OSError):
            os.close(self.master)


@contextlib.contextmanager
def pty_top(url: str) -> Iterator[PtyTop]:
    top = PtyTop(url)
    try:
        yield top
    finally:
        top.close()


def exit_code_within(top: PtyTop, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        top.pump(0.1)
        if top.popen.poll() is not None:
            return top.popen.returncode
    return None


def test_top_in_a_terminal_quits_on_q_with_exit_0(mesh: tuple[Proc, Proc]) -> None:
    a, _ = mesh
    with pty_top(a.url) as top:
        top.wait_for("q quits", 15)
        top.wait_for(" b ", 5)
        top.press("q")
        pressed = time.monotonic()
        assert exit_code_within(top, 3) == 0, top.text()[-2000:]
        assert time.monotonic() - pressed < 2.0
        assert "Traceback" not in top.text()


def test_top_keeps_retrying_an_unreachable_node_until_it_answers() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pty_top(url) as top:
        top.wait_for(f"cannot reach {url}", 15)
        assert "retrying" in top.text()
        args = meshlb_argv(
            "node",
            "--node-id",
            "late",
            "--http",
            f"127.0.0.1:{port}",
            "--gossip",
            f"127.0.0.1:{free_gossip_port()}",
            "--ollama",
            f"http://127.0.0.1:{free_port()}",
        )
        with spawn(args, url):
            top.raw = b""
            top.wait_for(" late ", 15)
        top.press("q")
        assert exit_code_within(top, 3) == 0


def test_top_without_a_terminal_runs_until_ctrl_c_and_exits_0(mesh: tuple[Proc, Proc]) -> None:
    a, _ = mesh
    popen = subprocess.Popen(
        meshlb_argv("top", "--node", a.url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV_80,
        text=True,
        # A suite started in the background by a non-interactive shell inherits SIGINT
        # ignored, and Python then never turns Ctrl-C into KeyboardInterrupt: give
        # top the disposition a terminal user's process has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(2.5)
        assert popen.poll() is None, "q is not read from a non-terminal: it runs on"
        popen.send_signal(signal.SIGINT)
        out, err = popen.communicate(timeout=5)
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(5)
    assert popen.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert LONG_ID[:6] in out, "the last frame is printed"


def busy(peer: dict[str, Any]) -> bool:
    load = peer["load"]
    return bool(load["running"] or load["rpm_used"] or load["tpm_used"])


def test_top_shows_a_killed_member_dead_without_its_last_load() -> None:
    with (
        sim_ollama(tokens_per_second=20) as sim,
        meshlb_node(sim.url, node_id="keeper") as a,
        meshlb_node(
            sim.url, "--join", f"127.0.0.1:{a.extra['gossip_port']}", node_id="doomed"
        ) as b,
    ):
        wait_until(
            lambda: "doomed" in {p["id"] for p in httpx.get(f"{a.url}/v1/peers").json()},
            20,
            "joined",
        )
        # Work on b through the Ollama API, not async tasks: nothing for a to take over.
        for _ in range(3):
            httpx.post(
                f"{b.url}/api/generate",
                json={"model": "llama3.2:1b", "prompt": "hi", "stream": False},
                timeout=30,
            )
        wait_until(
            lambda: any(
                p["id"] == "doomed" and busy(p) for p in httpx.get(f"{a.url}/v1/peers").json()
            ),
            15,
            "b's load gossiped to a",
        )
        b.kill()
        wait_until(
            lambda: any(
                p["id"] == "doomed" and p["state"] == "dead"
                for p in httpx.get(f"{a.url}/v1/peers").json()
            ),
            40,
            "a sees b dead",
        )
        peers = httpx.get(f"{a.url}/v1/peers").json()
        assert any(p["id"] == "doomed" and busy(p) for p in peers), "the stale load is still served"
        out = meshlb("top", "--once", "--node", a.url)
        assert out.returncode == 0, out.stderr
        row = next(line for line in out.stdout.splitlines() if line.lstrip().startswith("doomed"))
        assert " dead " in row and "no data" in row
        assert re.fullmatch(r"doomed +dead( +-){6} +\d+[smh] +no data", row.strip()), row
        assert "1/2 live" in out.stdout
