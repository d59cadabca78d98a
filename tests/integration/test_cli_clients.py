"""`meshlb peers | stats | submit` against a real node, and against no node at all."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.procs import Proc, free_port, meshlb_argv, meshlb_node, sim_ollama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node() -> Iterator[Proc]:
    with sim_ollama(tokens_per_second=500) as sim, meshlb_node(sim.url, node_id="cli") as n:
        yield n


def meshlb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshlb_argv(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_peers_lists_this_node_with_its_models(node: Proc) -> None:
    out = meshlb("peers", "--node", node.url)
    assert out.returncode == 0, out.stderr
    assert "cli" in out.stdout and "alive" in out.stdout and "llama3.2:1b" in out.stdout


def test_stats_shows_the_queue_and_the_mesh_totals(node: Proc) -> None:
    out = meshlb("stats", "--node", node.url)
    assert out.returncode == 0, out.stderr
    assert "queue and capacity" in out.stdout and "running         0/4" in out.stdout
    assert "mesh totals" in out.stdout and "taken over" in out.stdout


def test_submit_wait_prints_the_generated_text(node: Proc) -> None:
    out = meshlb("submit", "--node", node.url, "--model", "llama3.2:1b", "--prompt", "hi", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "the generated text"


def test_submit_unknown_model_says_so_and_exits_1(node: Proc) -> None:
    out = meshlb("submit", "--node", node.url, "--model", "ghost:7b", "--prompt", "hi")
    assert out.returncode == 1
    assert "404" in out.stderr and "model 'ghost:7b' not found" in out.stderr


def test_no_node_there_is_a_clear_error() -> None:
    out = meshlb("stats", "--node", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "cannot reach" in out.stderr
