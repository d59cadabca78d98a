"""The CLI's formatting rules (units, rounding, abbreviations) and `top`'s frames.

Pure: plain values in, strings out; `top`'s frames are rendered from hand-made
snapshots with a fixed clock into an 80-column console, no node and no terminal.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from meshlb.commands.client import member_load_cells, peers_table
from meshlb.commands.top import KeyReader
from meshlb.commands.top_render import Snapshot, render
from meshlb.commands.views import (
    abbreviate,
    fit_list,
    fmt_addresses,
    fmt_age,
    fmt_count,
    fmt_duration,
    fmt_rate,
    fmt_used_of,
    fmt_value,
    member_models,
    models_label,
    split_addr,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (math.nan, "-"),
        (True, "-"),
        ("12", "-"),
        (0, "0 ms"),
        (-3.0, "0 ms"),
        (0.0004, "<1 ms"),
        (0.06506199861178175, "65 ms"),
        (0.9994, "999 ms"),
        (1.234, "1.2 s"),
        (42.4, "42 s"),
        (200, "3m 20s"),
        (7500, "2h 05m"),
        (3 * 86400 + 4 * 3600 + 59, "3d 04h"),
    ],
)
def test_durations_carry_a_unit_and_are_rounded(seconds: Any, text: str) -> None:
    assert fmt_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.4, "0s"), (59.9, "59s"), (61, "1m"), (7200, "2h"), (3 * 86400, "3d")],
)
def test_ages_are_compact(seconds: Any, text: str) -> None:
    assert fmt_age(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (0, "0"),
        (0.0, "0"),
        (0.06506199861178175, "0.07"),
        (3.46, "3.5"),
        (42.0, "42"),
        (120.00000008446644, "120"),
        (12345.6, "12.3k"),
    ],
)
def test_rates_are_rounded(value: Any, text: str) -> None:
    assert fmt_rate(value) == text


def test_a_rate_with_a_unit() -> None:
    assert fmt_rate(210.04, "tok/s") == "210 tok/s"
    assert fmt_rate(None, "tok/s") == "-"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (7, "7"),
        (9999, "9999"),
        (12_345, "12.3k"),
        (456_789, "457k"),
        (2_000_000, "2M"),
        (7_800_000, "7.8M"),
        (1_500_000_000, "1.5G"),
        (2.5, "2.5"),
        (None, "-"),
    ],
)
def test_counts_are_short(value: Any, text: str) -> None:
    assert fmt_count(value) == text


def test_usage_against_a_limit() -> None:
    assert fmt_used_of(12, 60) == "12/60"
    assert fmt_used_of(12, None) == "12/∞"
    assert fmt_used_of(15_000, 100_000) == "15k/100k"
    assert fmt_used_of(None, 60) == "-"


def test_any_json_value_becomes_a_readable_cell() -> None:
    assert fmt_value(0.06506199861178175) == "0.07"
    assert fmt_value(None) == "-"
    assert fmt_value(True) == "yes"
    assert fmt_value([1, 2.345]) == "1, 2.3"
    assert fmt_value({"a": 1}) == "a 1"
    assert fmt_value([]) == "-"


def test_fit_list_keeps_whole_items_and_counts_the_rest() -> None:
    models = ["llama3.2:1b", "nomic-embed-text", "qwen2.5:0.5b"]
    assert fit_list(models, 80) == "llama3.2:1b,nomic-embed-text,qwen2.5:0.5b"
    assert fit_list(models, 31) == "llama3.2:1b,nomic-embed-text +1"
    assert fit_list(models, 20) == "llama3.2:1b +2"
    assert fit_list(models, 10) == "lla…:1b +2"
    assert fit_list([], 10) == "-"


@given(st.lists(st.text(min_size=1, max_size=30), max_size=8), st.integers(1, 90))
def test_fit_list_never_exceeds_its_width(items: list[str], width: int) -> None:
    assert len(fit_list(items, width)) <= max(width, 1)


def test_abbreviate_cuts_the_middle_and_keeps_both_ends() -> None:
    assert abbreviate("node1", 14) == "node1"
    cut = abbreviate("gpu-node-rack-17", 10)
    assert cut == "gpu-n…k-17" and len(cut) == 10


@given(st.text(max_size=60), st.integers(1, 40))
def test_abbreviate_fits(text: str, width: int) -> None:
    out = abbreviate(text, width)
    assert len(out) <= width and (out == text or "…" in out)


def test_addresses() -> None:
    assert split_addr("[::1]:11435") == ("[::1]", "11435")
    assert split_addr(None) == ("", "")
    assert fmt_addresses("10.0.0.5:11435", "10.0.0.5:7946") == "10.0.0.5:11435 g:7946"
    assert fmt_addresses("10.0.0.5:11435", "10.0.0.6:7946") == "10.0.0.5:11435 g:10.0.0.6:7946"
    assert fmt_addresses(None, "10.0.0.6:7946") == "gossip 10.0.0.6:7946"


def test_models_loaded_are_marked_first_whichever_field_carries_them() -> None:
    member = {
        "models": ["llama3.2:1b", "nomic-embed-text:latest", "qwen2.5:0.5b"],
        "loaded_models": [{"name": "qwen2.5:0.5b"}],
    }
    models, loaded = member_models(member)
    assert models == ["llama3.2:1b", "nomic-embed-text", "qwen2.5:0.5b"]
    assert models_label(models, loaded) == ["qwen2.5:0.5b*", "llama3.2:1b", "nomic-embed-text"]
    assert member_models({"models": ["a"], "models_loaded": ["a:latest"]})[1] == {"a"}
    assert member_models({}) == ([], set())


def member(node_id: str, state: str = "alive", **load: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "gossip_addr": "10.1.2.3:7946",
        "http_addr": "10.1.2.3:11435",
        "state": state,
        "incarnation": 3,
        "last_change": NOW - 75,
        "models": ["llama3.2:1b", "nomic-embed-text:latest", "qwen2.5:0.5b"],
        "ollama_up": True,
        "load": {
            "queued": 7,
            "running": 3,
            "max_concurrency": 4,
            "rpm_used": 42,
            "rpm_limit": 60,
            "tpm_used": 15_000,
            "tpm_limit": None,
            "tokens_per_s": 99.87654321,
            **load,
        },
        "counters": {"forwarded": 5, "stolen": 1, "taken_over": 2, "duplicates_dropped": 0},
    }


def test_a_dead_members_last_load_is_not_shown_as_current() -> None:
    cells = member_load_cells(member("b", "dead"))
    assert set(cells.values()) == {"-"}
    alive = member_load_cells(member("a"))
    assert alive["queued"] == "7" and alive["rpm"] == "42/60" and alive["tps"] == "99.9"


def frame_lines(renderable: Any, width: int = 80) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(renderable)
    return console.export_text().splitlines()


def cluster(*members: dict[str, Any]) -> dict[str, Any]:
    live = [m for m in members if m["state"] in ("alive", "suspect")]
    return {
        "node": members[0]["id"],
        "totals": {
            "members": len(members),
            "live": len(live),
            "queued": 0,
            "running": 0,
            "max_concurrency": 4 * len(live),
            "tokens_per_s": 199.75,
            "counters": {"forwarded": 5, "stolen": 1, "taken_over": 2},
        },
        "nodes": list(members),
    }


def test_top_frame_fits_80_columns_and_shows_a_dead_member_as_dead() -> None:
    snap = Snapshot(
        fetched_at=NOW,
        cluster=cluster(
            member("gpu-node-in-rack-seventeen-a"),
            member("gpu2", "suspect"),
            member("gpu3", "dead", queued=77, tokens_per_s=55.5),
        ),
        queues={
            "gpu-node-in-rack-seventeen-a": {
                "queued": 2,
                "running": 1,
                "effective_concurrency": 4,
                "depth_by_priority": {"1": 0, "5": 2},
                "mesh": {"succeeded": 1234567, "failed": 3},
            }
        },
        running=[
            {"id": "t-0123456789abcdef", "node": "gpu2", "priority": 5, "model": "llama3.2:1b"}
        ],
        last_ok_at=NOW,
    )
    lines = frame_lines(render(snap, "http://10.1.2.3:11435", NOW + 2))
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines), text
    dead = next(line for line in lines if line.lstrip().startswith("gpu3"))
    assert "dead" in dead and "no data" in dead and " 1m " in dead
    assert "77" not in dead and "55" not in dead, "a dead member's stale load is not shown"
    first = next(line for line in lines if "alive" in line)
    assert first.split()[0] == "gpu-nod…teen-a" and " 2 1/4 " in first and " 2s " in first
    suspect = next(line for line in lines if "suspect" in line)
    assert "gossip" in suspect, "load only from gossip says so"
    assert "queued 9 (p5 2)" in text, "fresh 2 + gossiped 7 of the suspect; by priority"
    assert "succeeded 1.2M" in text and "(1 of 2 nodes)" in text
    assert "taken over 2" in text and "200 tok/s" in text
    assert "t-0123456789abcdef" in text and "99.87" not in text


def test_top_shows_a_member_that_stopped_answering_as_silent_without_its_old_load() -> None:
    queue = {"queued": 1, "running": 0, "effective_concurrency": 4}
    snap = Snapshot(
        fetched_at=NOW,
        cluster=cluster(member("a"), member("c", queued=55, tokens_per_s=44.4)),
        queues={"a": queue},
        reached=frozenset({"a", "c"}),
        last_ok_at=NOW,
    )
    lines = frame_lines(render(snap, "http://a", NOW))
    silent = next(line for line in lines if line.lstrip().startswith("c "))
    assert "silent" in silent and "no data" in silent
    assert "55" not in silent and "44" not in silent and "42/60" not in silent
    assert any("queued 1 " in line for line in lines), "its gossiped queue is not counted"
    never = Snapshot(
        fetched_at=NOW, cluster=snap.cluster, queues={"a": queue}, reached=frozenset({"a"})
    )
    gossip = next(
        line for line in frame_lines(render(never, "x", NOW)) if line.lstrip().startswith("c ")
    )
    assert "gossip" in gossip and "42/60" in gossip, "never reached from here: gossip, said so"


def test_top_frame_when_the_node_stops_answering_is_labelled_stale() -> None:
    good = Snapshot(fetched_at=NOW, cluster=cluster(member("a")), last_ok_at=NOW)
    failed = Snapshot(
        fetched_at=good.fetched_at,
        cluster=good.cluster,
        error="cannot reach http://a:11435: connection refused",
        last_ok_at=NOW,
    )
    text = "\n".join(frame_lines(render(failed, "http://a:11435", NOW + 12)))
    assert "cannot reach http://a:11435" in text and "retrying" in text
    assert "STALE" in text and "12s ago" in text
    never = Snapshot(fetched_at=NOW, error="cannot reach http://a:11435: refused")
    lines = frame_lines(render(never, "http://a:11435", NOW, live=False))
    assert any("cannot reach" in line for line in lines)
    assert not any("retrying" in line for line in lines), "--once does not retry"
    assert not any("STALE" in line for line in lines)


def test_top_frame_with_fields_missing_does_not_fail() -> None:
    bare = {"node": "x", "nodes": [{"id": "x", "state": "alive"}, {"state": "left"}]}
    lines = frame_lines(render(Snapshot(fetched_at=NOW, cluster=bare, running=None), "x", NOW))
    assert any(line.lstrip().startswith("x ") for line in lines)
    assert any("not available" in line for line in lines)


def column(lines: list[str], header: str, next_header: str | None) -> str:
    """The text of one table column, its lines joined (wrapped cells read whole)."""
    head = next(line for line in lines if f" {header} " in f"{line} " and " state " in line)
    start = head.index(f" {header}") + 1
    end = head.index(f" {next_header}") + 1 if next_header else None
    below = lines[lines.index(head) + 1 :]
    return "".join(line[start:end].strip() for line in below)


def test_peers_at_80_columns_wraps_long_ids_and_addresses_instead_of_cutting() -> None:
    long_id = "gpu-node-in-rack-seventeen-number-0042"
    m = member(long_id)
    m["http_addr"] = "[fd00:1234:5678:9abc::42]:11435"
    m["gossip_addr"] = "[fd00:1234:5678:9abc::42]:7946"
    lines = frame_lines(peers_table([m, member("b", "dead")], "http://x", NOW))
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines), text
    assert "…" not in text
    assert long_id in column(lines, "id", "state")
    assert "[fd00:1234:5678:9abc::42]:11435" in column(lines, "address", "models")
    assert "llama3.2:1bnomic-embed-textqwen2.5:0.5b" in column(lines, "models", None)
    assert "1m" in text, "75 s since the last state change"


def test_key_reader_without_a_tty_reads_nothing_and_waits() -> None:
    with KeyReader(io.StringIO("q")) as keys:
        assert not keys.interactive
        started = time.monotonic()
        assert keys.read(0.05) == ""
        assert time.monotonic() - started >= 0.04
