"""What `meshlb top` draws: a snapshot of the mesh in, rich renderables out (pure).

Kept apart from the terminal loop (`top.py`) so every frame is testable without a
terminal or a node. Freshness rule: a dead or departed member's last gossiped load is
never shown as current (its cells are dashes, its age is the time since it died), and
when the node itself stops answering, the last frame is labelled stale and dimmed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from meshlb.commands.client import (
    STALE_STATES,
    member_load_cells,
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

# How often `top` refreshes (said in the frame when the node stops answering).
REFRESH_S = 1.0
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
