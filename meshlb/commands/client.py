"""`meshlb peers | stats | submit`: small clients of a node's HTTP API.

They talk to any node (default http://127.0.0.1:11435, or MESHLB_NODE) and print
rich tables for people; errors from the node are shown as the node's own sentence.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table

DEFAULT_NODE = "http://127.0.0.1:11435"
node_option = click.option(
    "--node",
    envvar="MESHLB_NODE",
    default=DEFAULT_NODE,
    show_default=True,
    help="URL of any node (env MESHLB_NODE).",
)


def call(method: str, url: str, **kwargs: Any) -> Any:
    """One request; a node error or an unreachable node becomes a ClickException."""
    try:
        response = httpx.request(method, url, timeout=kwargs.pop("timeout", 10.0), **kwargs)
    except httpx.HTTPError as e:
        raise click.ClickException(f"cannot reach {url}: {e}") from None
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise click.ClickException(f"{response.status_code}: {message}")
    return response.json()


def age(ts: float | None) -> str:
    return "" if ts is None else f"{max(0.0, time.time() - ts):.0f}s ago"


@click.command("peers")
@node_option
def peers_command(node: str) -> None:
    """Table of mesh members as one node sees them."""
    members = call("GET", f"{node.rstrip('/')}/v1/peers")
    table = Table(title=f"members seen by {node}")
    for col in ("id", "gossip", "http", "state", "inc", "changed", "queued", "running", "models"):
        table.add_column(col)
    for m in members:
        load = m.get("load") or {}
        table.add_row(
            m["id"],
            m.get("gossip_addr", ""),
            m.get("http_addr", ""),
            m["state"],
            str(m.get("incarnation", "")),
            age(m.get("last_change")),
            str(load.get("queued", "")),
            str(load.get("running", "")),
            ", ".join(m.get("models") or []),
        )
    Console().print(table)


@click.command("stats")
@node_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON instead of tables.")
def stats_command(node: str, as_json: bool) -> None:
    """Queue and capacity of one node, and the mesh totals."""
    queue = call("GET", f"{node.rstrip('/')}/v1/queue")
    cluster = call("GET", f"{node.rstrip('/')}/v1/cluster")
    if as_json:
        click.echo(json.dumps({"queue": queue, "cluster": cluster}, indent=2))
        return
    table = Table(title=f"node {queue.get('node')}")
    table.add_column("metric")
    table.add_column("value")
    grouped = ("node_counters", "mesh", "mailer")
    for key, value in queue.items():
        if key == "node" or key in grouped:
            continue
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    for group, prefix in zip(grouped, ("requests", "tasks", "mesh_messages"), strict=True):
        for key, value in (queue.get(group) or {}).items():
            table.add_row(f"{prefix}.{key}", str(value))
    totals = Table(title="mesh totals (live members)")
    totals.add_column("metric")
    totals.add_column("value")
    for key, value in (cluster.get("totals") or {}).items():
        if isinstance(value, dict):
            for sub, count in value.items():
                totals.add_row(f"{key}.{sub}", str(count))
        else:
            totals.add_row(key, json.dumps(value) if isinstance(value, list) else str(value))
    console = Console()
    console.print(table)
    console.print(totals)


@click.command("submit")
@node_option
@click.option("--model", required=True, help="Model name, e.g. llama3.2:1b.")
@click.option("--prompt", help="Prompt text.")
@click.option(
    "--file",
    "file_",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the prompt from a file ('-' is not supported; use --prompt).",
)
@click.option(
    "--kind",
    type=click.Choice(["generate", "chat", "embed"]),
    default="generate",
    show_default=True,
)
@click.option("--priority", type=click.IntRange(1, 10), default=5, show_default=True)
@click.option("--timeout", "timeout_s", type=float, help="Fail the task after this many seconds.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
def submit_command(
    node: str,
    model: str,
    prompt: str | None,
    file_: Path | None,
    kind: str,
    priority: int,
    timeout_s: float | None,
    wait: bool,
) -> None:
    """Submit an async task; print its id, or its result with --wait."""
    if (prompt is None) == (file_ is None):
        raise click.UsageError("give exactly one of --prompt or --file")
    text = prompt if prompt is not None else file_.read_text(encoding="utf-8")  # type: ignore[union-attr]
    request: dict[str, Any] = {"prompt": text}
    if kind == "chat":
        request = {"messages": [{"role": "user", "content": text}]}
    elif kind == "embed":
        request = {"input": text}
    body = {
        "kind": kind,
        "model": model,
        "request": request,
        "priority": priority,
        "timeout_s": timeout_s,
    }
    base = node.rstrip("/")
    task = call("POST", f"{base}/v1/tasks", json=body)
    if not wait:
        click.echo(task["id"])
        return
    console = Console(stderr=True)
    with console.status(f"task {task['id']} {task['state']}…") as status:
        while task["state"] in ("queued", "running"):
            task = call("GET", f"{base}/v1/tasks/{task['id']}", params={"wait": 20}, timeout=30.0)
            status.update(f"task {task['id']} {task['state']} on {task.get('node')}…")
    if task["state"] != "succeeded":
        click.echo(f"task {task['id']} {task['state']}: {task.get('error')}", err=True)
        sys.exit(1)
    result = task.get("result") or {}
    text_out = result.get("response") or (result.get("message") or {}).get("content")
    click.echo(text_out if text_out is not None else json.dumps(result))
