"""Start real meshlb processes on loopback for integration tests, and always stop them.

Why a helper: every integration test needs the same dance (free port, spawn, wait until
the HTTP endpoint answers, kill on exit, show the process log when something fails).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the OS says is free on 127.0.0.1 right now (TCP by default, UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_gossip_port() -> int:
    """A port free for both UDP (gossip) and TCP (push-pull uses the same number)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@dataclass
class Proc:
    """A running child process with its log file."""

    args: list[str]
    popen: subprocess.Popen[bytes]
    log_path: str
    url: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def meshlb_argv(*args: str) -> list[str]:
    """argv that runs the meshlb CLI of this checkout with this interpreter."""
    return [sys.executable, "-m", "meshlb", *args]


def wait_http(url: str, proc: Proc, timeout_s: float = 20.0, path: str = "/healthz") -> None:
    """Poll until `url + path` answers (any status below 500), or fail with the process log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process exited with {proc.popen.returncode}:\n{proc.log()}")
        try:
            r = httpx.get(url + path, timeout=1.0)
            if r.status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url}{path} did not answer within {timeout_s}s:\n{proc.log()}")


@contextlib.contextmanager
def spawn(
    args: list[str],
    url: str,
    ready_path: str = "/healthz",
    env: dict[str, str] | None = None,
    timeout_s: float = 45.0,
) -> Iterator[Proc]:
    """Run `args`, wait until `url` answers on `ready_path`, stop the process on exit."""
    fd, log_path = tempfile.mkstemp(prefix="meshlb-test-", suffix=".log")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with os.fdopen(fd, "wb") as log:
        popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    proc = Proc(args=args, popen=popen, log_path=log_path, url=url)
    try:
        wait_http(url, proc, timeout_s=timeout_s, path=ready_path)
        yield proc
    finally:
        proc.stop()
        with contextlib.suppress(OSError):
            os.unlink(log_path)


@contextlib.contextmanager
def spawn_retrying(
    make_args: Callable[[], tuple[list[str], str]],
    ready_path: str = "/healthz",
    env: dict[str, str] | None = None,
    attempts: int = 3,
) -> Iterator[Proc]:
    """`spawn` with fresh ports when the OS gave a port away between probe and bind.

    `free_port` can only say a port was free a moment ago; on a busy machine another
    process may take it first, so "Address already in use" means: pick again.
    """
    for attempt in range(attempts):
        args, url = make_args()
        stack = contextlib.ExitStack()
        try:
            proc = stack.enter_context(spawn(args, url, ready_path=ready_path, env=env))
        except RuntimeError as e:
            stack.close()
            if "already in use" in str(e) and attempt + 1 < attempts:
                continue
            raise
        with stack:
            yield proc
        return


@contextlib.contextmanager
def sim_ollama(
    *extra: str,
    models: str = "llama3.2:1b,nomic-embed-text",
    tokens_per_second: float = 200.0,
    parallel: int = 4,
) -> Iterator[Proc]:
    """A `meshlb sim-ollama` process on a free loopback port."""

    def make_args() -> tuple[list[str], str]:
        port = free_port()
        args = meshlb_argv(
            "sim-ollama",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--models",
            models,
            "--tokens-per-second",
            str(tokens_per_second),
            "--parallel",
            str(parallel),
            *extra,
        )
        return args, f"http://127.0.0.1:{port}"

    with spawn_retrying(make_args, ready_path="/api/version") as p:
        yield p


@contextlib.contextmanager
def meshlb_node(
    ollama_url: str, *extra: str, node_id: str = "n1", env: dict[str, str] | None = None
) -> Iterator[Proc]:
    """A `meshlb node` process on free loopback ports beside the given Ollama URL."""
    gossip_ports: list[int] = []

    def make_args() -> tuple[list[str], str]:
        http_port = free_port()
        gossip_ports.append(free_gossip_port())
        args = meshlb_argv(
            "node",
            "--node-id",
            node_id,
            "--http",
            f"127.0.0.1:{http_port}",
            "--gossip",
            f"127.0.0.1:{gossip_ports[-1]}",
            "--ollama",
            ollama_url,
            "--log-format",
            "json",
            *extra,
        )
        return args, f"http://127.0.0.1:{http_port}"

    with spawn_retrying(make_args, env=env) as p:
        p.extra["gossip_port"] = gossip_ports[-1]
        yield p


def poll(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> float | None:
    """Call `check` until it is true (HTTP errors count as not yet); the seconds it
    took, or None after `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return time.monotonic() - start
        time.sleep(interval_s)
    return None


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """`poll`, failing the test with `what` after `timeout_s`."""
    took = poll(check, timeout_s)
    if took is None:
        raise AssertionError(f"not within {timeout_s}s: {what}")
    return took


def alive_ids(node: Proc) -> set[str]:
    """Ids of the members `node` sees alive."""
    peers = httpx.get(f"{node.url}/v1/peers", timeout=2).json()
    return {p["id"] for p in peers if p["state"] == "alive"}


@contextlib.contextmanager
def small_memory_mesh(prefix: str) -> Iterator[tuple[list[Proc], list[Proc]]]:
    """3 joined nodes whose sims hold one of two 2 GB models (alpha, beta) at a time
    (3 GB of VRAM, loads at 2 GB/s): (sims, nodes); the residency test and benchmark
    share it."""
    with contextlib.ExitStack() as stack:
        sims = [
            stack.enter_context(
                sim_ollama(
                    "--vram-gb", "3", "--load-gbps", "2", models="alpha=2,beta=2",
                    tokens_per_second=400,
                )
            )
            for _ in range(3)
        ]  # fmt: skip
        first = stack.enter_context(meshlb_node(sims[0].url, node_id=f"{prefix}0"))
        seed = ["--join", f"127.0.0.1:{first.extra['gossip_port']}"]
        yield (
            sims,
            [first]
            + [
                stack.enter_context(meshlb_node(sims[i].url, *seed, node_id=f"{prefix}{i}"))
                for i in (1, 2)
            ],
        )
