"""Target selection (`X-Meshlb-Hosts`) and the merged progress stream, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from meshlb.mesh.model_ops import (
    Host,
    ProgressMerger,
    TargetError,
    hosts_with,
    select_targets,
    valid_model_name,
)


def host(node_id: str, state: str = "alive", up: bool = True, **kw: Any) -> Host:
    return Host(node_id, state, up, **kw)


MESH = [
    host("a", models=frozenset({"x:latest", "y:latest"}), load=3),
    host("b", models=frozenset({"x:latest"}), load=0),
    host("c", load=5),
    host("d", state="dead"),
    host("e", up=False),
]


@pytest.mark.parametrize(
    ("header", "model", "expected"),
    [
        (None, "", ["a", "b", "c"]),
        ("", "", ["a", "b", "c"]),
        ("ALL", "", ["a", "b", "c"]),
        ("1", "new", ["c"]),  # fewest models first
        ("2", "new", ["c", "b"]),
        ("1", "y", ["a"]),  # a host that has the model first
        ("2", "y", ["a", "c"]),
        ("c, a", "", ["c", "a"]),
        ("a,a", "", ["a"]),
    ],
)
def test_select_targets(header: str | None, model: str, expected: list[str]) -> None:
    assert select_targets(header, MESH, model) == expected


def test_count_prefers_free_memory_when_every_host_gossips_it() -> None:
    hosts = [
        host("a", free_memory_gb=2.0),
        host("b", free_memory_gb=20.0, models=frozenset({"q:latest", "r:latest"})),
        host("c", free_memory_gb=8.0),
    ]
    assert select_targets("2", hosts, "m") == ["b", "c"]
    # one host without the figure: fall back to fewest models, then load
    hosts[0] = host("a")
    assert select_targets("2", hosts, "m") == ["a", "c"]


@pytest.mark.parametrize(
    ("header", "status", "says"),
    [
        ("4", 422, "only 3 are live"),
        ("0", 400, "at least 1"),
        ("zz", 400, "unknown node: zz"),
        ("a,zz,yy", 400, "zz, yy"),
        ("a,,b", 400, "comma-separated"),
        ("a b", 400, "comma-separated"),
        ("d", 503, "d (dead)"),
        ("e", 503, "e (its Ollama is down)"),
        ("-1", 400, "unknown node: -1"),
    ],
)
def test_bad_headers(header: str, status: int, says: str) -> None:
    with pytest.raises(TargetError) as raised:
        select_targets(header, MESH, "m")
    assert raised.value.status == status
    assert says in raised.value.message


def test_no_live_host_is_503() -> None:
    with pytest.raises(TargetError) as raised:
        select_targets("all", [host("d", state="dead")])
    assert raised.value.status == 503


def test_hosts_with_and_names() -> None:
    assert hosts_with("x", MESH) == ["a", "b"]
    assert hosts_with("y:latest", MESH) == ["a"]
    assert hosts_with("z", MESH) == []
    assert valid_model_name("library/llama3.2:1b") and valid_model_name("a")
    assert (
        not valid_model_name("bad name") and not valid_model_name("") and not valid_model_name(":x")
    )


def layer(digest: str, total: int, completed: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"status": f"pulling {digest}", "digest": digest, "total": total}
    if completed is not None:
        event["completed"] = completed
    return event


def test_merged_progress_sums_hosts_and_never_goes_down() -> None:
    m = ProgressMerger(["a", "b"])
    assert m.feed("a", {"status": "pulling manifest"}) == [{"status": "pulling manifest"}]
    assert m.feed("b", {"status": "pulling manifest"}) == []  # said once
    out = m.feed("a", layer("d1", 100))
    assert out == [{"status": "pulling d1", "digest": "d1", "total": 200}]
    seen = []
    for h, c in [("a", 10), ("b", 30), ("a", 50), ("a", 40), ("b", 100), ("a", 100)]:
        (event,) = m.feed(h, layer("d1", 100, c))
        assert event["total"] == 200
        seen.append(event["completed"])
    assert seen == [10, 40, 80, 80, 150, 200]
    # a digest-less status after layers waits for every running host
    assert m.feed("a", {"status": "verifying sha256 digest"}) == []
    assert m.feed("b", {"status": "verifying sha256 digest"}) == [
        {"status": "verifying sha256 digest"}
    ]
    assert m.feed("a", {"status": "success"}) == []
    assert not m.done()
    assert m.feed("b", {"status": "success"}) == []
    assert m.done() and m.final() == {"status": "success"}


def test_a_failed_host_is_named_and_no_success() -> None:
    m = ProgressMerger(["a", "b", "c"])
    m.feed("a", layer("d1", 10, 5))
    m.feed("b", {"error": "connection reset"})
    m.feed("b", layer("d1", 10, 9))  # after its error: ignored
    (event,) = m.feed("c", layer("d1", 10, 1))
    assert event["completed"] == 6
    m.feed("a", {"status": "writing manifest"})
    # c dies: the status every remaining host reached is now due
    assert m.end("c", "node c stopped answering") == [{"status": "writing manifest"}]
    m.feed("a", {"status": "success"})
    final = m.final()
    assert set(final) == {"error"}
    assert "b (connection reset)" in final["error"] and "c (node c stopped" in final["error"]
    assert "succeeded on a" in final["error"]


def test_same_reason_everywhere_is_said_once() -> None:
    m = ProgressMerger(["a", "b"])
    m.feed("a", {"error": "file does not exist"})
    m.end("b", "file does not exist")
    assert m.final() == {"error": "pull failed on a, b: file does not exist"}


def test_a_stream_that_ends_without_success_is_a_failure() -> None:
    m = ProgressMerger(["a"])
    m.end("a", "ended its stream without success")
    assert "error" in m.final()
