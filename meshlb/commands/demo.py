"""`meshlb demo`: a local mesh of N nodes, each beside its own simulated Ollama.

Real processes, like a real fleet: each `meshlb node` and `meshlb sim-ollama` runs as
its own process on loopback, the nodes join the first one's gossip port, and the
simulated Ollamas run at different speeds so placement has something to decide.
Logs go to a temporary folder; Ctrl-C stops everything.

The demo is for watching the mesh, failures included: a node killed by hand (its
pid is printed) is shown as dead, restarted after `RESTART_AFTER_S` and shown
rejoining, while the rest of the mesh takes over its work.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

SPEEDS = (120.0, 60.0, 30.0, 240.0, 90.0, 45.0, 180.0, 20.0)
DEMO_MODELS = "llama3.2:1b,qwen2.5:0.5b,nomic-embed-text"
RESTART_AFTER_S = 5.0


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
class Supervised:
    """One process of the demo, restarted after it dies."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    died_at: float | None = None
    restarts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.died_at = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check(self, now: float) -> str | None:
        """Note a death, restart when due; returns a line to print, if any."""
        if self.running:
            return None
        if self.died_at is None:
            self.died_at = now
            code = self.popen.returncode if self.popen is not None else None
            return f"{self.name} exited (code {code}); restarting in {RESTART_AFTER_S:.0f} s"
        if now - self.died_at >= RESTART_AFTER_S:
            self.restarts += 1
            self.start()
            return f"{self.name} restarted (pid {self.pid})"
        return None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None


@dataclass
class DemoHost:
    """One simulated host: a sim-ollama and the node beside it."""

    name: str
    http_port: int
    gossip_port: int
    sim_port: int
    tokens_per_second: float
    procs: list[Supervised] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def node(self) -> Supervised:
        return self.procs[1]


def plan_hosts(count: int) -> tuple[list[DemoHost], bool]:
    """Ports for every host; True when a preferred port was taken (another demo?)."""
    hosts, moved = [], False
    for i in range(count):
        wanted = (11435 + i, 7946 + i, 11534 + i)
        got = (
            free_port(wanted[0]),
            free_port(wanted[1], socket.SOCK_DGRAM),
            free_port(wanted[2]),
        )
        moved = moved or got != wanted
        hosts.append(DemoHost(f"node{i + 1}", *got, tokens_per_second=SPEEDS[i % len(SPEEDS)]))
    return hosts, moved


def build_procs(hosts: list[DemoHost], log_dir: Path) -> None:
    me = [sys.executable, "-m", "meshlb"]
    seed = f"127.0.0.1:{hosts[0].gossip_port}"
    for i, h in enumerate(hosts):
        sim = [
            *me, "sim-ollama", "--host", "127.0.0.1", "--port", str(h.sim_port),
            "--models", DEMO_MODELS, "--tokens-per-second", str(h.tokens_per_second),
        ]  # fmt: skip
        node = [
            *me, "node", "--node-id", h.name, "--http", f"127.0.0.1:{h.http_port}",
            "--gossip", f"127.0.0.1:{h.gossip_port}", "--ollama", f"http://127.0.0.1:{h.sim_port}",
            *([] if i == 0 else ["--join", seed]),
        ]  # fmt: skip
        h.procs = [
            Supervised(f"{h.name}'s simulated Ollama", sim, log_dir / f"{h.name}-ollama.log"),
            Supervised(h.name, node, log_dir / f"{h.name}.log"),
        ]


def wait_ready(hosts: list[DemoHost], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    for h in hosts:
        while True:
            for p in h.procs:
                if not p.running:
                    raise click.ClickException(
                        f"{p.name} exited while starting; its log: {p.log_path}"
                    )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{h.url}/readyz", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise click.ClickException(f"{h.url} did not come up within {timeout_s:.0f}s")
            time.sleep(0.1)


def member_states(hosts: list[DemoHost]) -> dict[str, str]:
    """Each member's state as the first node that answers sees it."""
    for h in hosts:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return {p["id"]: p["state"] for p in httpx.get(f"{h.url}/v1/peers", timeout=0.5).json()}
    return {}


def status_table(hosts: list[DemoHost]) -> Table:
    table = Table(title="meshlb demo — live (Ctrl-C stops everything; kill a node to see failover)")
    columns = (
        "node", "pid", "mesh says", "tok/s", "queued", "running", "requests done",
        "tasks done", "forwarded", "stolen", "taken over",
    )  # fmt: skip
    for col in columns:
        table.add_column(col)
    states = member_states(hosts)
    now = time.monotonic()
    for h in hosts:
        state = states.get(h.name, "?")
        if not h.node.running and h.node.died_at is not None:
            left = max(0.0, RESTART_AFTER_S - (now - h.node.died_at))
            state = f"[red]{state}[/] (restart in {left:.0f}s)"
        elif state != "alive":
            state = f"[yellow]{state}[/]"
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
            row = ["[red]down[/]", "", "", "", "", "", ""]
        table.add_row(h.name, str(h.node.pid), state, f"{h.tokens_per_second:.0f}", *row)
    return table


def stop_all(procs: list[Supervised]) -> None:
    running = [p.popen for p in procs if p.popen is not None and p.popen.poll() is None]
    for popen in running:
        popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for popen in running:
        try:
            popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            popen.kill()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def print_intro(console: Console, hosts: list[DemoHost], log_dir: Path, moved: bool) -> None:
    console.print(
        f"[bold green]meshlb demo is up[/]: {len(hosts)} nodes on 127.0.0.1 (logs in {log_dir})"
    )
    if moved:
        console.print(
            "[yellow]note:[/] the usual ports (11435…, 7946…) were taken — another "
            "`meshlb demo` or node may be running — so this demo uses the ports below."
        )
    for h in hosts:
        console.print(
            f"  {h.name}: {h.url}   dashboard {h.url}/   pid {h.node.pid}  "
            f"(simulated Ollama at {h.tokens_per_second:.0f} tokens/s)"
        )
    first = hosts[0].url
    console.print("\nTry it:")
    console.print(
        f'  curl {first}/api/generate -d \'{{"model": "llama3.2:1b", '
        f'"prompt": "Why is the sky blue?", "stream": false}}\''
    )
    console.print(f"  meshlb peers --node {first}")
    console.print(
        f"  seq 60 | xargs -P 8 -I{{}} meshlb submit --node {first} --model llama3.2:1b "
        f'--prompt "task {{}}"   # a burst of async tasks: watch them spread'
    )
    console.print(
        f"  kill -9 {hosts[-1].node.pid}   # kill {hosts[-1].name}: the mesh marks it dead, "
        f"takes over its tasks; the demo restarts it after {RESTART_AFTER_S:.0f} s"
    )
    console.print(
        "  Any Ollama client works too, e.g. `pip install ollama` then "
        f"`ollama.Client(host='{first}').generate(model='llama3.2:1b', prompt='hi')`\n"
    )


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
    """Start a local mesh on loopback: N nodes beside simulated Ollamas. No Ollama needed.

    A node or simulated Ollama that dies (kill one to watch a failover) is restarted
    after a few seconds and rejoins the mesh.
    """
    console = Console()
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the children on SIGTERM too
    log_dir = Path(tempfile.mkdtemp(prefix="meshlb-demo-"))
    hosts, moved = plan_hosts(nodes)
    build_procs(hosts, log_dir)
    procs = [p for h in hosts for p in h.procs]
    try:
        for p in procs:
            p.start()
        with console.status(f"starting {nodes} nodes and {nodes} simulated Ollamas…"):
            wait_ready(hosts)
        print_intro(console, hosts, log_dir, moved)
        live = (
            contextlib.nullcontext()
            if no_live
            else Live(status_table(hosts), console=console, refresh_per_second=2)
        )
        with live:
            while True:
                time.sleep(1.0)
                for p in procs:
                    line = p.check(time.monotonic())
                    if line is not None:
                        console.print(f"[yellow]{line}[/]")
                if isinstance(live, Live):
                    live.update(status_table(hosts))
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        stop_all(procs)
    console.print("all stopped.")
