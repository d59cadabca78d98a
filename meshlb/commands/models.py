"""`meshlb pull | rm | cp`: model management across the mesh, through any node.

`pull` asks the node for per-host progress (header `X-Meshlb-Progress: nodes`: the
node interleaves each host's own progress objects, marked with `"node"`, in Ollama's
merged stream) and shows one progress bar per host plus the total. Errors are the
node's own sentences (they name the hosts); a node that cannot be reached, or that
stops answering mid-pull, is said so in one sentence.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import click
import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from meshlb.commands.client import node_option
from meshlb.mesh.model_ops import HOSTS_HEADER, PER_HOST_PROGRESS, PROGRESS_HEADER

NODES_HEADER = "x-meshlb-nodes"
CONNECT_TIMEOUT_S = 5.0


@dataclass
class Bar:
    """One progress bar: the layers it sums (digest -> [total, completed])."""

    task: TaskID
    layers: dict[str, list[int]] = field(default_factory=dict)

    def update(self, event: dict[str, Any]) -> tuple[int, int]:
        digest = event.get("digest")
        if isinstance(digest, str) and isinstance(event.get("total"), int):
            layer = self.layers.setdefault(digest, [0, 0])
            layer[0] = int(event["total"])
            if isinstance(event.get("completed"), int):
                layer[1] = max(layer[1], int(event["completed"]))
        return sum(t for t, _ in self.layers.values()), sum(c for _, c in self.layers.values())


def node_error(response: httpx.Response) -> str:
    try:
        doc = response.json()
        message = doc.get("error") if isinstance(doc, dict) else None
    except ValueError:
        message = None
    return f"{response.status_code}: {message or response.text or 'no reason given'}"


def new_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.fields[host]:<12}", markup=False),
        BarColumn(bar_width=20),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[state]}", markup=False),
        console=console,
    )


class PullView:
    """The bars of one pull: a total (Ollama's merged objects) and one per host."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.total = Bar(progress.add_task("total", total=None, host="total", state=""))
        self.hosts: dict[str, Bar] = {}
        self.host_states: dict[str, str] = {}

    def host(self, node: str) -> Bar:
        if node not in self.hosts:
            task = self.progress.add_task(node, total=None, host=node, state="")
            self.hosts[node] = Bar(task)
        return self.hosts[node]

    def feed(self, event: dict[str, Any]) -> None:
        node = event.get("node")
        bar = self.host(str(node)) if node is not None else self.total
        total, done = bar.update(event)
        status = str(event.get("status", ""))
        state = "failed (see below)" if event.get("reason") else status
        if node is not None:
            self.host_states[str(node)] = state
        if state.startswith("pulling ") and event.get("digest"):
            state = "pulling"
        self.progress.update(bar.task, total=total or None, completed=done, state=state)


def pull_stream(
    url: str, model: str, hosts: str, console: Console
) -> tuple[dict[str, Any], PullView]:
    """Run the pull, drawing bars; the final object (success or error) and the view."""
    headers = {HOSTS_HEADER: hosts, PROGRESS_HEADER: PER_HOST_PROGRESS}
    timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)
    final: dict[str, Any] = {}
    try:
        with httpx.stream(
            "POST", f"{url}/api/pull", json={"model": model}, headers=headers, timeout=timeout
        ) as r:
            if r.status_code >= 400:
                r.read()
                raise click.ClickException(node_error(r))
            with new_progress(console) as progress:
                view = PullView(progress)
                for line in r.iter_lines():
                    event = json.loads(line) if line.strip() else None
                    if not isinstance(event, dict):
                        continue
                    if "node" not in event and (
                        "error" in event or event.get("status") == "success"
                    ):
                        final = event
                        continue
                    view.feed(event)
    except httpx.ConnectError as e:
        raise click.ClickException(f"cannot reach the node at {url}: {e}") from None
    except httpx.HTTPError as e:
        raise click.ClickException(
            f"the node at {url} stopped answering mid-pull ({type(e).__name__}); "
            "the hosts' pulls were cancelled with it"
        ) from None
    if not final:
        raise click.ClickException(f"the node at {url} ended the pull without a result")
    return final, view


@click.command("pull")
@click.argument("model")
@click.option(
    "--hosts",
    default="all",
    show_default=True,
    help="Which hosts: 'all' live hosts, a count N (chosen by free model memory), "
    "or comma-separated node ids.",
)
@node_option
def pull_command(model: str, hosts: str, node: str) -> None:
    """Pull MODEL onto hosts of the mesh, in parallel, with a progress bar per host."""
    url = node.rstrip("/")
    console = Console()
    started = time.monotonic()
    final, view = pull_stream(url, model, hosts, console)
    took_s = time.monotonic() - started
    if "error" in final:
        raise click.ClickException(f"pull of {model} did not complete: {final['error']}")
    names = ", ".join(sorted(view.hosts)) or "the targeted hosts"
    console.print(f"pulled {model} to {names} in {took_s:.1f} s", markup=False, highlight=False)


def simple_call(method: str, url: str, payload: dict[str, Any]) -> httpx.Response:
    """One request to a node; an error becomes a ClickException with the node's sentence."""
    try:
        response = httpx.request(method, url, json=payload, timeout=httpx.Timeout(600, connect=5))
    except httpx.ConnectError as e:
        raise click.ClickException(f"cannot reach the node at {url}: {e}") from None
    except httpx.HTTPError as e:
        raise click.ClickException(f"the node at {url} failed: {type(e).__name__}") from None
    if response.status_code >= 400:
        raise click.ClickException(node_error(response))
    return response


@click.command("rm")
@click.argument("model")
@node_option
def rm_command(model: str, node: str) -> None:
    """Delete MODEL from every host of the mesh that has it."""
    r = simple_call("DELETE", f"{node.rstrip('/')}/api/delete", {"model": model})
    click.echo(f"deleted {model} from {r.headers.get(NODES_HEADER) or 'every host that had it'}")


@click.command("cp")
@click.argument("source")
@click.argument("destination")
@node_option
def cp_command(source: str, destination: str, node: str) -> None:
    """Copy SOURCE to DESTINATION on every host of the mesh that has SOURCE."""
    r = simple_call(
        "POST",
        f"{node.rstrip('/')}/api/copy",
        {"source": source, "destination": destination},
    )
    where = r.headers.get(NODES_HEADER) or "every host that has it"
    click.echo(f"copied {source} to {destination} on {where}")
