"""The simulator's memory core (Ollama's sched.go rules), driven with a hand-held clock."""

from __future__ import annotations

import math

import pytest

from meshlb.backend.sim_memory import (
    FOREVER_S,
    Ask,
    MemoryConfig,
    ModelMemory,
    common_prefix_len,
)

GB = 1_000_000_000


class Host:
    """A ModelMemory plus request ids, so tests read as a story."""

    def __init__(self, **cfg: float) -> None:
        self.mem = ModelMemory(MemoryConfig(**cfg))  # type: ignore[arg-type]
        self.next_id = 0

    def ask(self, model: str, now: float, size_gb: float = 1.0, **kw: object) -> int:
        self.next_id += 1
        self.mem.submit(Ask(self.next_id, model, int(size_gb * GB), **kw), now)  # type: ignore[arg-type]
        return self.next_id

    def granted(self, req: int) -> bool:
        return self.mem.grant(req) is not None

    def models(self, now: float) -> list[str]:
        self.mem.advance(now)
        return sorted(x.model for x in self.mem.loaded(now))


def test_a_load_takes_size_over_rate_and_requests_for_it_wait() -> None:
    h = Host(load_bytes_per_s=2 * GB, load_fixed_s=0.5)
    a = h.ask("a", 0.0, size_gb=3.0)
    assert not h.granted(a) and h.mem.next_deadline() == pytest.approx(2.0)  # 0.5 + 3/2
    b = h.ask("a", 1.0)  # same model, still loading: waits
    c = h.ask("c", 1.0)  # and (as in sched.go) so does everything behind it
    h.mem.advance(1.99)
    assert not any(map(h.granted, (a, b, c)))
    h.mem.advance(2.0)
    ga, gb = h.mem.grant(a), h.mem.grant(b)
    assert ga is not None and gb is not None and ga.runner_at == pytest.approx(2.0)
    assert gb.runner_at == pytest.approx(2.0) and h.mem.loads == 2  # a, then c
    assert not h.granted(c)  # c's own load began at 2.0 and takes time
    assert h.mem.next_deadline() == pytest.approx(2.0 + 0.5 + 0.5)


def test_default_loads_are_instant_and_memory_unlimited() -> None:
    h = Host()
    reqs = [h.ask(m, 0.0, size_gb=100.0) for m in ("a", "b", "c")]
    assert all(map(h.granted, reqs)) and h.models(0.0) == ["a", "b", "c"]


def test_keep_alive_default_per_request_zero_and_forever() -> None:
    h = Host(keep_alive_s=300.0)
    a = h.ask("a", 0.0)
    h.mem.finish(a, 10.0)
    assert h.mem.loaded(10.0)[0].expires_at == pytest.approx(310.0)
    assert h.models(309.0) == ["a"] and h.models(310.0) == []
    b = h.ask("b", 400.0, keep_alive_s=5.0)
    h.mem.finish(b, 401.0)
    assert h.models(405.9) == ["b"] and h.models(406.0) == []
    c = h.ask("c", 500.0, keep_alive_s=FOREVER_S)
    h.mem.finish(c, 501.0)
    assert h.models(1e9) == ["c"]
    d = h.ask("d", 2e9, keep_alive_s=0.0)
    assert h.models(2e9) == ["c", "d"]  # loaded while it runs
    h.mem.finish(d, 2e9 + 1)
    assert h.models(2e9 + 1) == ["c"]  # keep_alive 0: gone when done


def test_the_last_requests_keep_alive_is_the_runners() -> None:
    h = Host(keep_alive_s=300.0)
    h.mem.finish(h.ask("a", 0.0, keep_alive_s=1000.0), 0.0)
    h.mem.finish(h.ask("a", 1.0), 1.0)  # no keep_alive given: the runner keeps 1000 s
    assert h.mem.loaded(1.0)[0].expires_at == pytest.approx(1001.0)


def test_expire_unloads_idle_now_and_busy_when_done() -> None:
    h = Host()
    h.mem.finish(h.ask("a", 0.0), 0.0)
    b = h.ask("b", 0.0)
    h.mem.expire("a", 1.0)
    h.mem.expire("b", 1.0)
    h.mem.expire("never-loaded", 1.0)
    assert h.models(1.0) == ["b"]  # b has a request running: never interrupted
    h.mem.finish(b, 2.0)
    assert h.models(2.0) == []


def test_max_loaded_evicts_the_least_recently_used_idle_model() -> None:
    h = Host(max_loaded=2)
    h.mem.finish(h.ask("a", 0.0), 1.0)
    h.mem.finish(h.ask("b", 2.0), 3.0)
    h.mem.finish(h.ask("a", 4.0), 5.0)  # a used again: b is now least recently used
    c = h.ask("c", 6.0)
    assert h.granted(c) and h.models(6.0) == ["a", "c"] and h.mem.evictions == 1


def test_a_model_that_does_not_fit_evicts_idle_ones_until_it_fits() -> None:
    h = Host(vram_bytes=5 * GB)
    for t, m in enumerate(("a", "b")):
        h.mem.finish(h.ask(m, float(t), size_gb=2.0), float(t))
    c = h.ask("c", 5.0, size_gb=3.0)  # 2 + 2 + 3 > 5: one 2 GB model must go (a, LRU)
    assert h.granted(c) and h.models(5.0) == ["b", "c"]
    d = h.ask("d", 6.0, size_gb=4.5)  # needs both others gone
    assert not h.granted(d)  # c is still running, so d waits ...
    assert h.models(6.0) == ["c"]  # ... after the idle b went at once
    h.mem.finish(c, 7.0)
    assert h.granted(d) and h.models(7.0) == ["d"] and h.mem.evictions == 3


def test_a_busy_model_is_never_evicted_and_the_new_request_waits() -> None:
    h = Host(vram_bytes=3 * GB)
    a = h.ask("a", 0.0, size_gb=2.0)
    b = h.ask("b", 0.0, size_gb=2.0)
    behind = h.ask("a", 0.5, size_gb=2.0)  # behind b in the queue: waits too (sched.go)
    assert h.granted(a) and not h.granted(b) and not h.granted(behind)
    h.mem.advance(100.0)
    assert h.models(100.0) == ["a"]
    h.mem.finish(a, 101.0)
    gb = h.mem.grant(b)
    assert gb is not None and gb.runner_at == pytest.approx(101.0)
    assert h.models(101.0) == ["b"]


def test_the_shortest_keep_alive_goes_first() -> None:
    h = Host(max_loaded=2)
    h.mem.finish(h.ask("long", 0.0, keep_alive_s=3600.0), 0.0)
    h.mem.finish(h.ask("short", 1.0, keep_alive_s=60.0), 1.0)
    h.mem.finish(h.ask("long", 2.0), 2.0)
    h.mem.finish(h.ask("short", 3.0), 3.0)  # short is the most recent, yet goes
    h.ask("new", 4.0)
    assert h.models(4.0) == ["long", "new"]


def test_a_first_model_larger_than_vram_loads_partly_offloaded() -> None:
    h = Host(vram_bytes=4 * GB)
    assert h.granted(h.ask("big", 0.0, size_gb=10.0))
    (big,) = h.mem.loaded(0.0)
    assert (big.size, big.size_vram) == (10 * GB, 4 * GB)


def test_no_second_load_starts_while_one_loads_but_loaded_models_serve() -> None:
    h = Host(load_bytes_per_s=1 * GB)
    h.mem.advance(2.0)
    a = h.ask("a", 0.0, size_gb=2.0)
    h.mem.advance(2.0)
    h.mem.finish(a, 2.0)
    slow = h.ask("slow", 3.0, size_gb=4.0)  # loading until 7
    other = h.ask("other", 3.0, size_gb=1.0)  # must wait for that load to end
    warm = h.ask("a", 3.0)  # a is loaded: served at once
    assert h.granted(warm) and not h.granted(other) and not h.granted(slow)
    h.mem.advance(7.0)
    assert h.granted(slow) and not h.granted(other)
    h.mem.advance(8.0)
    g = h.mem.grant(other)
    assert g is not None and g.runner_at == pytest.approx(8.0)


def test_parallel_slots_per_model_in_fifo_order() -> None:
    h = Host(parallel=2)
    reqs = [h.ask("a", 0.0) for _ in range(3)]
    other = h.ask("b", 0.0)
    assert [h.granted(r) for r in reqs] == [True, True, False] and h.granted(other)
    h.mem.finish(reqs[0], 1.0)
    g = h.mem.grant(reqs[2])
    assert g is not None and (g.runner_at, g.started_at) == (0.0, 1.0)


def test_prefix_cache_picks_the_free_slot_with_the_longest_common_prefix() -> None:
    h = Host(parallel=2)
    one = h.ask("a", 0.0, prompt="hello world")
    two = h.ask("a", 0.0, prompt="goodbye")
    h.mem.finish(one, 1.0, processed="hello world, and the reply")
    h.mem.finish(two, 1.0, processed="goodbye moon")
    follow = h.ask("a", 2.0, prompt="hello world, and the reply. next?")
    g = h.mem.grant(follow)
    assert g is not None and g.cached_chars == len("hello world, and the reply")
    assert g.slot == h.mem.grant(follow).slot  # type: ignore[union-attr]
    other = h.ask("a", 2.0, prompt="good day")
    g2 = h.mem.grant(other)
    assert g2 is not None and g2.slot != g.slot and g2.cached_chars == len("good")
    nocache = h.ask("b", 2.0, prompt="x", use_cache=False)
    assert h.mem.grant(nocache).cached_chars == 0  # type: ignore[union-attr]


def test_a_different_num_ctx_reloads_the_model() -> None:
    h = Host()
    h.mem.finish(h.ask("a", 0.0, num_ctx=4096), 0.0)
    r = h.ask("a", 1.0, num_ctx=8192)
    assert h.granted(r) and h.mem.loads == 2
    assert h.mem.loaded(1.0)[0].num_ctx == 8192


def test_cancel_while_queued_waiting_or_loading() -> None:
    h = Host(load_bytes_per_s=1 * GB, parallel=1)
    loader = h.ask("a", 0.0, size_gb=5.0)
    h.mem.cancel(loader, 1.0)  # the client left during the load: the load is aborted
    assert h.models(1.0) == [] and h.mem.next_deadline() == math.inf
    first = h.ask("b", 2.0, size_gb=1.0)
    h.mem.advance(3.0)
    queued = h.ask("b", 3.0)
    h.mem.cancel(queued, 3.5)  # waiting for the one slot: simply gone
    h.mem.finish(first, 4.0)
    assert h.mem.loaded(4.0)[0].expires_at == pytest.approx(304.0)
    later = h.ask("b", 5.0)
    assert h.granted(later)
    h.mem.cancel(later, 6.0)  # running: frees the slot as finish does
    assert h.mem.grant(later) is None and h.models(6.0) == ["b"]


def test_load_only_requests_need_no_slot() -> None:
    h = Host(parallel=1)
    busy = h.ask("a", 0.0)
    load = h.ask("a", 0.0, prompt=None)
    g = h.mem.grant(load)
    assert h.granted(busy) and g is not None and g.slot == -1


def test_common_prefix_len() -> None:
    cases = [("", "", 0), ("abc", "abd", 2), ("abc", "abc", 3), ("abc", "abcdef", 3), ("x", "y", 0)]
    for a, b, n in cases:
        assert common_prefix_len(a, b) == n == common_prefix_len(b, a)
    assert common_prefix_len("a" * 100_000 + "b", "a" * 100_000 + "c") == 100_000
