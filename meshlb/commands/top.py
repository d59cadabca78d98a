"""`meshlb top`: the whole mesh live in a terminal, refreshed every second; q quits.

Three parts, so the view is testable without a terminal or a node:
- `fetch_snapshot` reads one node's `/v1/cluster`, each live member's own `/v1/queue`
  (fresher than gossip: it is the member's own count, now) and the running tasks;
- `render` turns a snapshot into rich renderables (pure: snapshot and `now` in);
- `run_top` refreshes a `rich.live.Live` every second, reading keys without blocking
  (cbreak mode on a TTY; without one it runs until Ctrl-C).

Freshness rule: a dead or departed member's last gossiped load is never shown as
current (its cells are dashes, its age is the time since it died), and when the node
itself stops answering, the last frame is labelled stale and dimmed while `top`
keeps retrying.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

import click
import httpx
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from meshlb.commands.client import (
    STALE_STATES,
    member_load_cells,
    node_option,
    plain,
    styled_state,
)
from meshlb.commands.views import (
    DASH,
    abbreviate,
    fit_list,
    fmt_age,
    fmt_count,
    fmt_rate,
    fmt_used_of,
    member_models,
    models_label,
)

REFRESH_S = 1.0
MEMBER_TIMEOUT_S = 0.8
RUNNING_ROWS = 6


@dataclass
class Snapshot:
    """What one refresh read; `error` set (and the rest from before) when the node failed."""

    fetched_at: float
    cluster: dict[str, Any] | None = None
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    running: list[dict[str, Any]] | None = None
    error: str | None = None
    last_ok_at: float | None = None
    # Members whose own /v1/queue answered at some refresh of this `top`: one of them
    # not answering now has gone silent (its gossiped load is history, not shown).
    reached: frozenset[str] = frozenset()


def _get(client: httpx.Client, url: str, timeout_s: float, **params: str) -> Any:
    response = client.get(url, params=params or None, timeout=timeout_s)
    response.raise_for_status()
    return response.json()


def fetch_snapshot(
    client: httpx.Client, base: str, previous: Snapshot | None, pool: ThreadPoolExecutor
) -> Snapshot:
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

    tasks_future = pool.submit(running_tasks)
    queues = {k: v for k, v in pool.map(member_queue, live) if v is not None}
    return Snapshot(
        fetched_at=now,
        cluster=cluster,
        queues=queues,
        running=tasks_future.result(),
        last_ok_at=now,
        reached=(previous.reached if previous else frozenset()) | queues.keys(),
    )


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def member_row(
    member: dict[str, Any], queue: dict[str, Any] | None, snap: Snapshot, now: float
) -> dict[str, str]:
    """The cells of one member: its own fresh queue when it answered, else gossip."""
    cells = member_load_cells(member)
    state = member.get("state")
    if state in STALE_STATES:
        since = member.get("last_change")
        cells["seen"] = fmt_age(now - since) if isinstance(since, int | float) else DASH
    elif queue is not None:
        cells["queued"] = fmt_count(queue.get("queued"))
        limits = queue.get("limits") or {}
        cap = queue.get("effective_concurrency", limits.get("max_concurrency"))
        cells["running"] = fmt_used_of(queue.get("running"), cap)
        cells["seen"] = fmt_age(now - snap.fetched_at)
    elif str(member.get("id")) in snap.reached:
        cells = dict.fromkeys(cells, DASH)
        cells["seen"] = "silent"
    else:
        age = member.get("meta_age_s")
        cells["seen"] = fmt_age(age) if isinstance(age, int | float) else "gossip"
    return cells


def is_silent(member: dict[str, Any], snap: Snapshot) -> bool:
    """Live by gossip, but its own address stopped answering `top`."""
    node_id = str(member.get("id"))
    return (
        member.get("state") not in STALE_STATES
        and node_id in snap.reached
        and node_id not in snap.queues
    )


COLUMNS = (
    ("id", "left"),
    ("state", "left"),
    ("olla", "left"),
    ("queue", "right"),
    ("run", "right"),
    ("rpm", "right"),
    ("tpm", "right"),
    ("tok/s", "right"),
    ("seen", "right"),
)


def members_table(snap: Snapshot, now: float, width: int) -> Table:
    """One line per member; models get whatever width the figures leave."""
    cluster = snap.cluster or {}
    nodes = [n for n in cluster.get("nodes") or [] if isinstance(n, dict)]
    rows: list[tuple[dict[str, Any], dict[str, str]]] = []
    for m in nodes:
        cells = member_row(m, snap.queues.get(str(m.get("id"))), snap, now)
        cells["id"] = abbreviate(str(m.get("id", "?")), 14)
        cells["state"] = str(m.get("state") or "?")
        cells["olla"] = cells.pop("ollama")
        cells["queue"] = cells.pop("queued")
        cells["run"] = cells.pop("running")
        cells["tok/s"] = cells.pop("tps")
        rows.append((m, cells))
    widths = {name: max([len(name), *(len(c[name]) for _, c in rows)]) for name, _ in COLUMNS}
    # The box draws one space at each edge and one between columns (padding 0).
    models_width = max(8, width - sum(widths.values()) - len(COLUMNS) - 2)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    for name, justify in COLUMNS:
        table.add_column(name, justify=justify, no_wrap=True, min_width=widths[name])  # type: ignore[arg-type]
    table.add_column("models (* loaded)", no_wrap=True, overflow="ellipsis", max_width=models_width)
    for m, cells in rows:
        models, loaded = member_models(m)
        stale = m.get("state") in STALE_STATES or is_silent(m, snap)
        models_cell = "no data" if stale else fit_list(models_label(models, loaded), models_width)
        style = "dim" if stale else ("yellow" if m.get("state") == "suspect" else "")
        table.add_row(
            *plain(
                cells["id"],
                styled_state(m.get("state")),
                Text(cells["olla"], style="red" if cells["olla"] == "down" else ""),
                *(cells[name] for name, _ in COLUMNS[3:]),
                models_cell,
            ),
            style=style,
        )
    return table


def mesh_lines(snap: Snapshot, now: float) -> list[Text]:
    """Totals: tasks by state, by priority, moves between nodes, throughput."""
    cluster = snap.cluster or {}
    totals = cluster.get("totals") or {}
    nodes = [n for n in cluster.get("nodes") or [] if isinstance(n, dict)]
    live = [n for n in nodes if n.get("state") not in STALE_STATES]
    queued = running = 0.0
    for n in live:
        if is_silent(n, snap):
            continue
        fresh = snap.queues.get(str(n.get("id")))
        load = fresh if fresh is not None else (n.get("load") or {})
        queued += _num(load.get("queued"))
        running += _num(load.get("running"))
    by_prio: dict[str, float] = {}
    tasks: dict[str, float] = {}
    for q in snap.queues.values():
        for prio, depth in (q.get("depth_by_priority") or {}).items():
            by_prio[str(prio)] = by_prio.get(str(prio), 0.0) + _num(depth)
        for key in ("succeeded", "failed", "cancelled"):
            tasks[key] = tasks.get(key, 0.0) + _num((q.get("mesh") or {}).get(key))
    prio_text = ", ".join(f"p{p} {fmt_count(d)}" for p, d in by_prio.items() if d)
    line1 = Text("tasks  ", style="bold")
    line1.append(f"queued {fmt_count(queued)}")
    if prio_text:
        line1.append(f" ({prio_text})")
    line1.append(f"  running {fmt_used_of(running, totals.get('max_concurrency'))}")
    if snap.queues:
        line1.append(f"  succeeded {fmt_count(tasks['succeeded'])}")
        line1.append(f"  failed {fmt_count(tasks['failed'])}")
        if len(snap.queues) < len(live):
            line1.append(f" ({len(snap.queues)} of {len(live)} nodes)", style="dim")
    counters = totals.get("counters") or {}
    line2 = Text("moves  ", style="bold")
    line2.append(
        f"forwarded {fmt_count(counters.get('forwarded'))}"
        f"  stolen {fmt_count(counters.get('stolen'))}"
        f"  taken over {fmt_count(counters.get('taken_over'))}"
        f"  ·  {fmt_rate(totals.get('tokens_per_s'), 'tok/s')}"
    )
    holders: dict[str, int] = {}
    hot: dict[str, int] = {}
    for n in live:
        models, loaded = member_models(n)
        for name in models:
            holders[name] = holders.get(name, 0) + 1
        for name in loaded:
            hot[name] = hot.get(name, 0) + 1
    line3 = Text("models ", style="bold")
    line3.append(
        ", ".join(
            f"{name} on {count}" + (f" ({hot[name]} loaded)" if name in hot else "")
            for name, count in sorted(holders.items())
        )
        or "none on a live member"
    )
    return [line1, line2, line3]


def running_table(snap: Snapshot, now: float) -> RenderableType:
    """The running tasks of the mesh, oldest first, a few rows."""
    if snap.running is None:
        return Text("running tasks: not available from this node", style="dim")
    if not snap.running:
        return Text("no task running", style="dim")
    tasks = sorted(snap.running, key=lambda t: _num(t.get("started_at")) or now)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    for name in ("running task", "node", "prio", "for", "model"):
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for t in tasks[:RUNNING_ROWS]:
        started = t.get("started_at")
        table.add_row(
            *plain(
                str(t.get("id", "?")),
                abbreviate(str(t.get("node") or DASH), 14),
                fmt_count(t.get("priority")),
                fmt_age(now - started) if isinstance(started, int | float) else DASH,
                str(t.get("model") or DASH),
            )
        )
    if len(tasks) > RUNNING_ROWS:
        table.caption = f"and {len(tasks) - RUNNING_ROWS} more"
    return table


def render(
    snap: Snapshot, node: str, now: float, width: int = 80, live: bool = True
) -> RenderableType:
    """One frame of `top` (pure: the same snapshot and clock give the same frame).

    `live` says whether another refresh follows (so an error says "retrying")."""
    cluster = snap.cluster or {}
    totals = cluster.get("totals") or {}
    head = Text("meshlb top ", style="bold")
    head.append(f"{cluster.get('node', '?')} @ {node.removeprefix('http://')}")
    if snap.cluster is not None:
        head.append(f"  {fmt_count(totals.get('live'))}/{fmt_count(totals.get('members'))} live")
    head.append(f"  {time.strftime('%H:%M:%S', time.localtime(now))}")
    if live:
        head.append("  q quits", style="dim")
    parts: list[RenderableType] = [head]
    if snap.error is not None:
        retry = f" (retrying every {REFRESH_S:.0f} s)" if live else ""
        parts.append(Text(f"{snap.error}{retry}", style="bold red"))
        if snap.cluster is None:
            return Group(*parts)
        ago = fmt_age(now - snap.last_ok_at) if snap.last_ok_at else "?"
        parts.append(Text(f"STALE: the last data below is from {ago} ago", style="red"))
    body: list[RenderableType] = [
        *mesh_lines(snap, now),
        members_table(snap, now, width),
        running_table(snap, now),
    ]
    if snap.error is not None:
        return Group(*parts, *_dim(body))
    return Group(*parts, *body)


def _dim(parts: list[RenderableType]) -> list[RenderableType]:
    out: list[RenderableType] = []
    for part in parts:
        if isinstance(part, Text):
            part.stylize("dim")
        elif isinstance(part, Table):
            part.style = "dim"
        out.append(part)
    return out


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
        with httpx.Client() as client, ThreadPoolExecutor(max_workers=8) as pool:
            while not self.stop.is_set():
                started = time.monotonic()
                snap = fetch_snapshot(client, self.base, self.latest(), pool)
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
        with httpx.Client() as client, ThreadPoolExecutor(max_workers=8) as pool:
            snap = fetch_snapshot(client, base, None, pool)
        console.print(render(snap, base, time.time(), console.width, live=False))
        if snap.error is not None:
            sys.exit(1)
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: exit 0, no traceback
        run_top(node, console, sys.stdin)
