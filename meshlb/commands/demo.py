"""`meshlb demo`: a local mesh of N nodes, each beside its own simulated Ollama.

Real processes, like a real fleet: each `meshlb node` and `meshlb sim-ollama` runs as
its own process on loopback, the nodes join the first one's gossip port, and the
simulated Ollamas run at different speeds so placement has something to decide.
Logs go to a temporary folder; Ctrl-C stops everything.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

SPEEDS = (120.0, 60.0, 30.0, 240.0, 90.0, 45.0, 180.0, 20.0)
DEMO_MODELS = "llama3.2:1b,qwen2.5:0.5b,nomic-embed-text"


def free_port(preferred: int, kind: int = socket.SOCK_STREAM) -> int:
    """`preferred` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise click.ClickException("no free port on 127.0.0.1")


@dataclass
class DemoHost:
    """One simulated host: a sim-ollama and the node beside it."""

    name: str
    http_port: int
    gossip_port: int
    sim_port: int
    tokens_per_second: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def plan_hosts(count: int) -> list[DemoHost]:
    hosts = []
    for i in range(count):
        hosts.append(
            DemoHost(
                name=f"node{i + 1}",
                http_port=free_port(11435 + i),
                gossip_port=free_port(7946 + i, socket.SOCK_DGRAM),
                sim_port=free_port(11534 + i),
                tokens_per_second=SPEEDS[i % len(SPEEDS)],
            )
        )
    return hosts


def start(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise click.ClickException(f"a process exited early while waiting for {url}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise click.ClickException(f"{url} did not come up within {timeout_s:.0f}s")


def status_table(hosts: list[DemoHost]) -> Table:
    table = Table(title="meshlb demo — live (Ctrl-C stops everything)")
    columns = (
        "node", "url", "ollama tok/s", "queued", "running", "requests done", "tasks done",
        "forwarded", "stolen", "taken over",
    )  # fmt: skip
    for col in columns:
        table.add_column(col)
    for h in hosts:
        try:
            q = httpx.get(f"{h.url}/v1/queue", timeout=0.5).json()
            c, mesh = q.get("node_counters", {}), q.get("mesh", {})
            row = [
                str(q.get("queued")),
                str(q.get("running")),
                str(c.get("completed", 0)),
                str(mesh.get("succeeded", 0)),
                str(c.get("forwarded", 0) + mesh.get("forwarded", 0)),
                str(mesh.get("stolen_by_here", 0)),
                str(mesh.get("taken_over", 0)),
            ]
        except (httpx.HTTPError, ValueError):
            row = ["down", "", "", "", "", "", ""]
        table.add_row(h.name, h.url, f"{h.tokens_per_second:.0f}", *row)
    return table


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command("demo")
@click.option(
    "--nodes",
    default=3,
    show_default=True,
    type=click.IntRange(1, 16),
    help="How many nodes (each with its own simulated Ollama).",
)
@click.option("--no-live", is_flag=True, help="Print the URLs and wait, without the live table.")
def demo_command(nodes: int, no_live: bool) -> None:
    """Start a local mesh on loopback: N nodes beside simulated Ollamas. No Ollama needed."""
    console = Console()
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the children on SIGTERM too
    log_dir = Path(tempfile.mkdtemp(prefix="meshlb-demo-"))
    hosts = plan_hosts(nodes)
    procs: list[subprocess.Popen[bytes]] = []
    me = [sys.executable, "-m", "meshlb"]
    seed = f"127.0.0.1:{hosts[0].gossip_port}"
    try:
        for h in hosts:
            procs.append(
                start(
                    [
                        *me,
                        "sim-ollama",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(h.sim_port),
                        "--models",
                        DEMO_MODELS,
                        "--tokens-per-second",
                        str(h.tokens_per_second),
                    ],
                    log_dir / f"{h.name}-ollama.log",
                )
            )
        for i, h in enumerate(hosts):
            join = [] if i == 0 else ["--join", seed]
            procs.append(
                start(
                    [
                        *me,
                        "node",
                        "--node-id",
                        h.name,
                        "--http",
                        f"127.0.0.1:{h.http_port}",
                        "--gossip",
                        f"127.0.0.1:{h.gossip_port}",
                        "--ollama",
                        f"http://127.0.0.1:{h.sim_port}",
                        *join,
                    ],
                    log_dir / f"{h.name}.log",
                )
            )
        with console.status(f"starting {nodes} nodes and {nodes} simulated Ollamas…"):
            for h in hosts:
                wait_ready(f"{h.url}/readyz", procs)
        console.print(
            f"[bold green]meshlb demo is up[/]: {nodes} nodes on 127.0.0.1 (logs in {log_dir})"
        )
        for h in hosts:
            console.print(
                f"  {h.name}: {h.url}   dashboard {h.url}/  "
                f"(simulated Ollama at {h.tokens_per_second:.0f} tokens/s)"
            )
        first = hosts[0].url
        console.print("\nTry it:")
        console.print(
            f'  curl {first}/api/generate -d \'{{"model": "llama3.2:1b", '
            f'"prompt": "Why is the sky blue?"}}\''
        )
        console.print(
            f'  OLLAMA_HOST={first} python -c "import ollama; '
            f"print(ollama.generate(model='llama3.2:1b', prompt='hi').response)\""
        )
        console.print(
            f"  seq 60 | xargs -P 8 -I{{}} meshlb submit --node {first} --model llama3.2:1b "
            f'--prompt "task {{}}"   # a burst of async tasks: watch them spread\n'
        )
        if no_live:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
        else:
            with Live(status_table(hosts), console=console, refresh_per_second=2) as live:
                while all(p.poll() is None for p in procs):
                    time.sleep(1.0)
                    live.update(status_table(hosts))
        console.print("[red]a demo process exited; stopping the rest[/]")
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        stop_all(procs)
    console.print("all stopped.")
