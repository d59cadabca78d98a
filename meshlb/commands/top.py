"""`meshlb top`: the whole mesh live in a terminal, refreshed every second; q quits.

Two parts here and the view in `top_render`, testable without a terminal or a node:
- `fetch_snapshot` reads one node's `/v1/cluster`, each live member's own `/v1/queue`
  (fresher than gossip: it is the member's own count, now) and the running tasks;
- `top_render.render` turns a snapshot into rich renderables (snapshot and `now` in);
- `run_top` refreshes a `rich.live.Live` every second, reading keys without blocking
  (cbreak mode on a TTY; without one it runs until Ctrl-C).

The member reads run in daemon threads (`in_daemon_threads`), not a
ThreadPoolExecutor: Python joins an executor's workers at exit, so a Ctrl-C while a
member was slow to answer kept `top` on screen for seconds (a CI run saw more than 5).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeVar

import click
import httpx
from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from meshlb.commands.client import (
    STALE_STATES,
    node_option,
)
from meshlb.commands.top_render import REFRESH_S, Snapshot, render

MEMBER_TIMEOUT_S = 0.8
T = TypeVar("T")


def in_daemon_threads(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Each call's result, the calls run at once in daemon threads (which the
    interpreter does not wait for at exit)."""
    results: dict[int, T] = {}

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[i] for i in range(len(calls))]


def _get(client: httpx.Client, url: str, timeout_s: float, **params: str) -> Any:
    response = client.get(url, params=params or None, timeout=timeout_s)
    response.raise_for_status()
    return response.json()


def fetch_snapshot(client: httpx.Client, base: str, previous: Snapshot | None) -> Snapshot:
    """One refresh: the cluster view, every live member's queue, the running tasks.

    A member whose own address does not answer from here keeps its gossiped figures
    (marked as such); only the node named with --node failing makes the frame stale.
    """
    now = time.time()
    try:
        cluster = _get(client, f"{base}/v1/cluster", 2.0)
    except (httpx.HTTPError, ValueError) as e:
        reason = f"HTTP {e.response.status_code}" if isinstance(e, httpx.HTTPStatusError) else e
        kept = previous or Snapshot(fetched_at=now)
        return Snapshot(
            fetched_at=kept.fetched_at,
            cluster=kept.cluster,
            queues=kept.queues,
            running=kept.running,
            error=f"cannot reach {base}: {reason or type(e).__name__}",
            last_ok_at=kept.last_ok_at,
            reached=kept.reached,
        )
    nodes = [n for n in cluster.get("nodes") or [] if isinstance(n, dict)]
    live = [n for n in nodes if n.get("state") not in STALE_STATES and n.get("http_addr")]

    def member_queue(member: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        url = f"http://{member['http_addr']}/v1/queue"
        try:
            return str(member.get("id")), _get(client, url, MEMBER_TIMEOUT_S)
        except (httpx.HTTPError, ValueError):
            return str(member.get("id")), None

    def running_tasks() -> list[dict[str, Any]] | None:
        try:
            answer = _get(client, f"{base}/v1/tasks", 2.0, state="running", limit="50")
        except (httpx.HTTPError, ValueError):
            return None
        return [t for t in answer.get("tasks") or [] if isinstance(t, dict)]

    running: list[list[dict[str, Any]] | None] = []
    tasks_read = threading.Thread(target=lambda: running.append(running_tasks()), daemon=True)
    tasks_read.start()
    answers = in_daemon_threads([functools.partial(member_queue, m) for m in live])
    queues = {k: v for k, v in answers if v is not None}
    tasks_read.join()
    return Snapshot(
        fetched_at=now,
        cluster=cluster,
        queues=queues,
        running=running[0],
        last_ok_at=now,
        reached=(previous.reached if previous else frozenset()) | queues.keys(),
    )


class KeyReader:
    """Keys without blocking: cbreak mode on a TTY (restored on exit), else none."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.fd: int | None = None
        self.saved: Any = None

    def __enter__(self) -> KeyReader:
        try:
            is_tty = self.stream.isatty()
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return self
        if is_tty:
            import termios
            import tty

            self.fd = fd
            self.saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # keeps ISIG: Ctrl-C still raises KeyboardInterrupt
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    @property
    def interactive(self) -> bool:
        return self.fd is not None

    def read(self, timeout_s: float) -> str:
        """Keys typed within `timeout_s` ("" when none, or sleeps without a TTY)."""
        if self.fd is None:
            time.sleep(max(0.0, timeout_s))
            return ""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout_s))
        if not ready:
            return ""
        return os.read(self.fd, 64).decode("utf-8", errors="replace")


class Poller:
    """Refreshes the snapshot every second in a thread, so keys never wait on HTTP."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.lock = threading.Lock()
        self.snapshot: Snapshot | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="meshlb-top-poll", daemon=True)

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self.stop.is_set():
                started = time.monotonic()
                snap = fetch_snapshot(client, self.base, self.latest())
                with self.lock:
                    self.snapshot = snap
                self.stop.wait(max(0.05, REFRESH_S - (time.monotonic() - started)))

    def latest(self) -> Snapshot | None:
        with self.lock:
            return self.snapshot


def waiting_frame(node: str, now: float) -> RenderableType:
    return Text(f"meshlb top: asking {node}…", style="dim")


def run_top(node: str, console: Console, stdin: TextIO) -> None:
    """The live loop: redraw every second; q (on a TTY) or Ctrl-C ends it."""
    base = node.rstrip("/")
    poller = Poller(base)
    poller.thread.start()
    try:
        with (
            KeyReader(stdin) as keys,
            Live(
                waiting_frame(base, time.time()),
                console=console,
                auto_refresh=False,
                screen=keys.interactive and console.is_terminal,
                transient=False,
            ) as live,
        ):
            next_draw = time.monotonic()
            while True:
                typed = keys.read(max(0.0, next_draw - time.monotonic()))
                if "q" in typed.lower():
                    return
                if time.monotonic() >= next_draw:
                    snap = poller.latest()
                    now = time.time()
                    frame = (
                        waiting_frame(base, now)
                        if snap is None
                        else render(snap, base, now, console.width)
                    )
                    live.update(frame, refresh=True)
                    next_draw += REFRESH_S
                    next_draw = max(next_draw, time.monotonic())
    finally:
        poller.stop.set()


@click.command("top")
@node_option
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and tests).")
def top_command(node: str, once: bool) -> None:
    """Live view of the whole mesh: members, queues, running work, rates (q quits)."""
    console = Console()
    if once:
        base = node.rstrip("/")
        with httpx.Client() as client:
            snap = fetch_snapshot(client, base, None)
        console.print(render(snap, base, time.time(), console.width, live=False))
        if snap.error is not None:
            sys.exit(1)
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: exit 0, no traceback
        run_top(node, console, sys.stdin)
