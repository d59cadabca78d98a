"""`meshlb peers | stats | submit`: small clients of a node's HTTP API.

They talk to any node (default http://127.0.0.1:11435, or MESHLB_NODE) and print
rich tables for people; errors from the node are shown as the node's own sentence.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypeGuard

import click
import httpx
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from meshlb.commands.views import (
    DASH,
    flatten,
    fmt_age,
    fmt_ago,
    fmt_bool_up,
    fmt_count,
    fmt_duration,
    fmt_rate,
    fmt_used_of,
    fmt_value,
    label,
    member_models,
    models_label,
    short_model,
    split_addr,
)

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


STALE_STATES = ("dead", "left")


def plain(*cells: str | Text) -> list[Text]:
    """Cells as Text, so a "[" in an id, a model or an IPv6 address is not rich markup."""
    return [c if isinstance(c, Text) else Text(c) for c in cells]


def member_load_cells(member: dict[str, Any]) -> dict[str, str]:
    """A member's load as table cells; a dead or departed member's are dashes.

    Its last gossiped load is history, not the present: showing it as current
    would send an operator looking for work that is no longer there.
    """
    load = member.get("load") or {}
    if member.get("state") in STALE_STATES:
        return dict.fromkeys(("queued", "running", "rpm", "tpm", "tps", "ollama"), DASH)
    return {
        "queued": fmt_count(load.get("queued")),
        "running": fmt_used_of(load.get("running"), load.get("max_concurrency")),
        "rpm": fmt_used_of(load.get("rpm_used"), load.get("rpm_limit")),
        "tpm": fmt_used_of(load.get("tpm_used"), load.get("tpm_limit")),
        "tps": fmt_rate(load.get("tokens_per_s")),
        "ollama": fmt_bool_up(member.get("ollama_up")),
    }


STATE_STYLE = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "red"}


def styled_state(state: Any) -> Text:
    text = str(state or "?")
    return Text(text, style=STATE_STYLE.get(text, ""))


def member_table(node: str, gap: int = 0) -> Table:
    """A borderless table: the box's one space between columns, plus `gap` more."""
    return Table(
        title=Text(f"members seen by {node}"),
        caption="* loaded in memory",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, gap, 0, 0),
    )


def peers_table(members: list[dict[str, Any]], node: str, now: float) -> Table:
    """Members in 80 columns: addresses and models wrap onto more lines, never cut."""
    table = member_table(node)
    table.add_column("id", overflow="fold", max_width=16)
    table.add_column("state")
    table.add_column("inc", justify="right")
    table.add_column("since", justify="right")
    table.add_column("ollama")
    table.add_column("q", justify="right")
    table.add_column("run", justify="right")
    table.add_column("address", overflow="fold", min_width=15)
    table.add_column("models", overflow="fold", min_width=12)
    for m in members:
        cells = member_load_cells(m)
        http_addr, gossip_addr = m.get("http_addr"), m.get("gossip_addr")
        gossip_host, gossip_port = split_addr(gossip_addr)
        if http_addr and split_addr(http_addr)[0] == gossip_host:
            address = f"{http_addr}\ngossip :{gossip_port}"
        else:
            address = "\n".join(
                a for a in (http_addr, gossip_addr and f"gossip {gossip_addr}") if a
            )
        models, loaded = member_models(m)
        names = models_label(models, loaded)
        if m.get("models_truncated"):
            names.append("(more)")
        table.add_row(
            *plain(
                str(m.get("id", "?")),
                styled_state(m.get("state")),
                fmt_value(m.get("incarnation")),
                fmt_age(now - m["last_change"]) if _is_num(m.get("last_change")) else DASH,
                cells["ollama"],
                cells["queued"],
                cells["running"],
                address or DASH,
                "\n".join(names) or DASH,
            )
        )
    return table


def peers_wide_table(members: list[dict[str, Any]], node: str, now: float) -> Table:
    """Every field of every member on one line each, nothing abbreviated."""
    table = member_table(node, gap=1)
    columns = (
        "id", "gossip", "http", "state", "inc", "changed", "ollama", "queued", "running",
        "rpm", "tpm", "tok/s", "forwarded", "stolen", "taken over", "models (* loaded)",
    )  # fmt: skip
    for col in columns:
        table.add_column(col, no_wrap=True)
    for m in members:
        cells = member_load_cells(m)
        counters = m.get("counters") or {}
        models, loaded = member_models(m)
        names = models_label(models, loaded) + (["(more)"] if m.get("models_truncated") else [])
        table.add_row(
            *plain(
                str(m.get("id", "?")),
                m.get("gossip_addr") or DASH,
                m.get("http_addr") or DASH,
                styled_state(m.get("state")),
                fmt_value(m.get("incarnation")),
                fmt_ago(m.get("last_change"), now),
                cells["ollama"],
                cells["queued"],
                cells["running"],
                cells["rpm"],
                cells["tpm"],
                cells["tps"],
                fmt_count(counters.get("forwarded")),
                fmt_count(counters.get("stolen")),
                fmt_count(counters.get("taken_over")),
                ", ".join(names) or DASH,
            )
        )
    return table


def _is_num(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


@click.command("peers")
@node_option
@click.option("--wide", is_flag=True, help="Every field, one line per member, nothing cut.")
def peers_command(node: str, wide: bool) -> None:
    """Table of mesh members as one node sees them (fits 80 columns; --wide for all)."""
    members = call("GET", f"{node.rstrip('/')}/v1/peers")
    if not isinstance(members, list):
        raise click.ClickException(f"{node}/v1/peers did not answer a list of members")
    now = time.time()
    if wide:
        table = peers_wide_table(members, node, now)
        console = Console()
        # As wide as the table needs: --wide is for a wide terminal, a pager or a file.
        needed = Measurement.get(console, console.options.update_width(100_000), table)
        console.width = max(console.width, needed.maximum)
        console.print(table)
        return
    Console().print(peers_table(members, node, now))


def kv_grid(pairs: list[tuple[str, str]], per_row: int) -> Table:
    """Label/value pairs laid out `per_row` to a line, labels dim, values right-aligned."""
    grid = Table.grid(padding=(0, 1))
    for _ in range(per_row):
        grid.add_column(style="dim")
        grid.add_column(justify="right")
        grid.add_column(width=1)
    for i in range(0, len(pairs), per_row):
        row: list[str] = []
        chunk = pairs[i : i + per_row]
        for name, value in chunk:
            row.extend((name, value, ""))
        row.extend([""] * (3 * (per_row - len(chunk))))
        grid.add_row(*plain(*row))
    return grid


QUEUE_KNOWN = {
    "node", "depth_by_priority", "queued", "running", "effective_concurrency",
    "backoff_until", "limits", "rpm_used", "tpm_used", "wait", "counters",
    "node_counters", "mesh", "mailer",
}  # fmt: skip
TOTALS_KNOWN = {
    "members", "live", "by_state", "queued", "running", "max_concurrency",
    "tokens_per_s", "models", "counters",
}  # fmt: skip


def queue_view(queue: dict[str, Any], now: float) -> list[Any]:
    """One node's queue, capacity, wait times, per-priority depth and counters."""
    limits = queue.get("limits") or {}
    wait = queue.get("wait") or {}
    backoff = queue.get("backoff_until")
    eff, cap = queue.get("effective_concurrency"), limits.get("max_concurrency")
    running = fmt_used_of(queue.get("running"), eff)
    if _is_num(eff) and _is_num(cap) and eff != cap:
        running += f" (max {fmt_count(cap)})"
    pairs = [
        ("queued", fmt_count(queue.get("queued"))),
        ("running", running),
        ("requests/min", fmt_used_of(queue.get("rpm_used"), limits.get("rpm"))),
        ("tokens/min", fmt_used_of(queue.get("tpm_used"), limits.get("tpm"))),
        ("max queue", fmt_count(limits.get("max_queue"))),
        ("priority aging", fmt_duration(limits.get("aging_s"))),
        ("busy backoff", fmt_duration(limits.get("busy_backoff_s"))),
        (
            "backing off",
            f"for {fmt_duration(backoff - now)}" if _is_num(backoff) and backoff > now else "no",
        ),
    ]
    parts: list[Any] = [Text(f"node {queue.get('node', '?')}: queue and capacity", style="bold")]
    parts.append(kv_grid(pairs, 2))
    ms = {k: wait.get(k) for k in ("p50_ms", "p95_ms", "p99_ms")}
    waits = [
        (k.removesuffix("_ms"), fmt_duration(v / 1000 if _is_num(v) else None))
        for k, v in ms.items()
    ]
    waits.append(("samples", fmt_count(wait.get("samples"))))
    parts += [Text("\nwait in queue", style="bold"), kv_grid(waits, 4)]
    depth = queue.get("depth_by_priority") or {}
    if isinstance(depth, dict) and depth:
        prio = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
        prio.add_column("priority", style="dim")
        for key in depth:
            prio.add_column(str(key), justify="right")
        prio.add_row(*plain("queued", *(fmt_count(v) for v in depth.values())))
        parts.append(prio)
    for group, title in (
        ("counters", "queue counters"),
        ("node_counters", "requests"),
        ("mesh", "tasks (since this node started)"),
        ("mailer", "node-to-node messages"),
    ):
        values = queue.get(group)
        if isinstance(values, dict) and values:
            pairs = [(label(k), fmt_value(v)) for k, v in flatten(values)]
            parts += [Text(f"\n{title}", style="bold"), kv_grid(pairs, 3)]
    other = [
        (label(k), fmt_value(v))
        for k, v in flatten({k: v for k, v in queue.items() if k not in QUEUE_KNOWN})
    ]
    if other:
        parts += [Text("\nother", style="bold"), kv_grid(other, 2)]
    return parts


def totals_view(cluster: dict[str, Any]) -> list[Any]:
    """The mesh totals over live members, as one node sees them."""
    totals = cluster.get("totals") or {}
    by_state = totals.get("by_state") or {}
    states = ", ".join(f"{fmt_count(v)} {k}" for k, v in by_state.items() if v) or DASH
    pairs = [
        ("members", f"{fmt_count(totals.get('live'))} live of {fmt_count(totals.get('members'))}"),
        ("states", states),
        ("queued", fmt_count(totals.get("queued"))),
        ("running", fmt_used_of(totals.get("running"), totals.get("max_concurrency"))),
        ("tokens/s", fmt_rate(totals.get("tokens_per_s"))),
    ]
    counters = totals.get("counters") or {}
    pairs += [(label(k), fmt_value(v)) for k, v in flatten(counters)]
    pairs += [
        (label(k), fmt_value(v))
        for k, v in flatten({k: v for k, v in totals.items() if k not in TOTALS_KNOWN})
    ]
    models = ", ".join(short_model(m) for m in totals.get("models") or [] if isinstance(m, str))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim")
    grid.add_column(overflow="fold")
    grid.add_row(*plain("models", models or DASH))
    return [Text("\nmesh totals (live members)", style="bold"), kv_grid(pairs, 2), grid]


@click.command("stats")
@node_option
@click.option("--json", "as_json", is_flag=True, help="Print the node's raw JSON instead.")
def stats_command(node: str, as_json: bool) -> None:
    """Queue and capacity of one node, and the mesh totals."""
    queue = call("GET", f"{node.rstrip('/')}/v1/queue")
    cluster = call("GET", f"{node.rstrip('/')}/v1/cluster")
    if as_json:
        click.echo(json.dumps({"queue": queue, "cluster": cluster}, indent=2))
        return
    console = Console()
    for part in [*queue_view(queue, time.time()), *totals_view(cluster)]:
        console.print(part)
