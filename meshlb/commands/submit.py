"""`meshlb submit`: send one async task to any node; print its id, or wait for its result.

Waiting long-polls `GET /v1/tasks/{id}?wait=20`, so a task that moves between nodes
(forwarded, stolen, taken over) is followed wherever it runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from meshlb.commands.client import call, node_option


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
    if file_ is not None and prompt is None:
        text = file_.read_text(encoding="utf-8")
    elif prompt is not None and file_ is None:
        text = prompt
    else:
        raise click.UsageError("give exactly one of --prompt or --file")
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
