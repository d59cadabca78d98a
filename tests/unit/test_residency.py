"""Residency-aware placement: a load, and what it evicts, priced in seconds."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from meshlb.backend.catalog import (
    LoadedModel,
    LocalResidency,
    load_duration_s,
    parse_expiry,
    parse_ps,
)
from meshlb.backend.ollama import OllamaBackend
from meshlb.mesh.affinity import SLOT_SURVIVAL
from meshlb.mesh.meta import MAX_META_BYTES, NodeMeta, decode_meta, encode_meta
from meshlb.mesh.placement import (
    Candidate,
    RunHere,
    SendTo,
    TaskNeeds,
    expected_completion_s,
    place,
)
from meshlb.mesh.placement_service import MemberLoad, PlacementService
from meshlb.mesh.residency import (
    BUSY_EVICT_FACTOR,
    IDLE_EVICT_FRACTION,
    LOAD_FIXED_S,
    LOAD_HYSTERESIS,
    Residency,
    Resident,
    cold_start_s,
    load_s,
    victims,
    with_assumed_rate,
)
from meshlb.mesh.residency_placement import SentModels, is_unload, residency_of, with_sent
from meshlb.mesh.residency_watch import gossiped

A, B, C = "a:latest", "b:latest", "c:latest"


def host(
    node_id: str,
    loaded: tuple[Resident, ...] = (),
    memory_gb: float | None = 8.0,
    queued: int = 0,
    running: int = 0,
    local: bool = False,
    gbps: float | None = 2.0,
) -> Candidate:
    return Candidate(
        node_id,
        frozenset({A, B, C}),
        queued,
        running,
        4,
        50.0,
        is_local=local,
        residency=Residency(loaded, memory_gb, gbps),
    )


# (case, host residency, model, size, expected extra seconds before the task can run)
RES_2GB = 2.0
PRICES = [
    ("loaded: no load", (Resident(A, 4.0),), A, 4.0, 0.0),
    ("cold, fits: the load with hysteresis", (Resident(B, 2.0),), A, 4.0,
     LOAD_HYSTERESIS * (LOAD_FIXED_S + 4.0 / 2.0)),
    ("cold, evicts an idle model: + a fraction of its reload", (Resident(B, 6.0),), A, 4.0,
     LOAD_HYSTERESIS * (LOAD_FIXED_S + 2.0) + IDLE_EVICT_FRACTION * (LOAD_FIXED_S + 3.0)),
    ("cold, evicts a busy model: + its queue drains (twice) + its reload",
     (Resident(B, 6.0, active=8),), A, 4.0,
     LOAD_HYSTERESIS * (LOAD_FIXED_S + 2.0) + BUSY_EVICT_FACTOR * 8 / 4 * 2.0
     + LOAD_HYSTERESIS * (LOAD_FIXED_S + 3.0)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "loaded", "model", "size", "extra_s"), PRICES)
def test_cold_start_prices(
    case: str, loaded: tuple[Resident, ...], model: str, size: float, extra_s: float
) -> None:
    res = Residency(loaded, 8.0, 2.0)
    assert cold_start_s(res, model, size, service_s=2.0, slots=4) == pytest.approx(extra_s), case


def test_a_model_larger_than_the_memory_pays_for_offload_and_a_full_host_evicts_by_count() -> None:
    from meshlb.mesh.residency import MAX_LOADED, OFFLOAD_SLOWDOWN

    small = Residency((Resident(B, 2.0),), 8.0, 2.0)
    assert cold_start_s(Residency((Resident(A, 12.0),), 8.0), A, 12.0, 2.0, 4) == (
        pytest.approx((OFFLOAD_SLOWDOWN - 1) * 2.0)
    )
    assert cold_start_s(small, A, 12.0, 2.0, 4) > cold_start_s(small, A, 4.0, 2.0, 4) + 8
    full = Residency(tuple(Resident(f"m{i}", 1.0, expires_at=i) for i in range(MAX_LOADED)), 80.0)
    assert [v.model for v in victims(full, 1.0)] == ["m0"]


def test_only_measured_loads_are_priced_and_unknown_memory_evicts_nothing() -> None:
    assert cold_start_s(None, A, 4.0, 2.0, 4) == 0.0
    assert victims(Residency((Resident(B, 60.0),), None, None), 4.0) == []
    assert load_s(Residency(), 4.0) == 0.0  # never timed: a host that loads instantly
    assert load_s(Residency(load_gbps=2000.0), 4.0) == 0.0  # timed as instant
    assert cold_start_s(Residency((Resident(B, 6.0),), 8.0), A, 4.0, 2.0, 4) == 0.0
    _, untimed, unknown = with_assumed_rate([Residency(load_gbps=2.0), Residency(), None])
    assert untimed is not None and untimed.load_gbps == 2.0 and unknown is None
    assert with_assumed_rate([Residency(), None]) == [Residency(), None]


def test_evicting_the_only_copy_of_an_idle_model_costs_its_whole_reload() -> None:
    res = Residency((Resident(B, 6.0),), 8.0, 2.0)
    shared = cold_start_s(res, A, 4.0, 2.0, 4)
    sole = cold_start_s(res, A, 4.0, 2.0, 4, sole={B})
    reload_s = LOAD_FIXED_S + 3.0
    assert sole - shared == pytest.approx((LOAD_HYSTERESIS - IDLE_EVICT_FRACTION) * reload_s)


def test_idle_victims_go_first_least_recently_used_first() -> None:
    res = Residency(
        (
            Resident(A, 3.0, active=1),
            Resident(B, 3.0, expires_at=200),
            Resident(C, 2.0, expires_at=100),
        ),
        8.0,
    )
    assert [v.model for v in victims(res, 2.0)] == [C]
    assert [v.model for v in victims(res, 5.0)] == [C, B]
    assert [v.model for v in victims(res, 8.0)] == [C, B, A]


# (case, hosts, expected node) — the task: model A, 100 tokens (2 s of service), 4 GB.
PLACES = [
    ("loaded peer beats a cold local host",
     [host("here", local=True), host("p", (Resident(A, 4.0),))], "p"),
    ("cold host with free memory beats one that evicts busy work",
     [host("busy", (Resident(B, 6.0, active=4),)), host("free", (Resident(B, 2.0),))], "free"),
    ("evicting idle work beats evicting busy work",
     [host("busy", (Resident(B, 6.0, active=4),)), host("idle", (Resident(B, 6.0),))], "idle"),
    ("a short queue where it is loaded beats a load (hysteresis)",
     [host("warm", (Resident(A, 4.0),), queued=4, running=4), host("cold")], "warm"),
    ("a queue longer than the load spreads it to a second host",
     [host("warm", (Resident(A, 4.0, active=20),), queued=16, running=4), host("cold")],
     "cold"),
    ("a cold host here does not beat a warm peer with a short queue",
     [host("here", local=True), host("p", (Resident(A, 4.0, active=3),), running=3)], "p"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "hosts", "expected"), PLACES)
def test_placement_by_residency(case: str, hosts: list[Candidate], expected: str) -> None:
    for seed in range(20):  # the power of two choices never picks the dearer one
        d = place(TaskNeeds(A, 100, size_gb=4.0), hosts, random.Random(seed))
        node = d.node_id if isinstance(d, SendTo) else "here" if isinstance(d, RunHere) else None
        assert node == expected, case


def test_size_is_learned_from_a_host_that_has_it_loaded() -> None:
    hosts = [host("p", (Resident(A, 12.0),), memory_gb=16.0), host("q", memory_gb=16.0)]
    d = place(TaskNeeds(A, 100), hosts, random.Random(1))
    assert isinstance(d, SendTo) and d.node_id == "p"
    q_eta = expected_completion_s(hosts[1], TaskNeeds(A, 100, size_gb=12.0))
    assert q_eta == pytest.approx(2.0 + LOAD_HYSTERESIS * (LOAD_FIXED_S + 6.0))


def test_nodes_that_must_start_a_load_pick_the_same_host() -> None:
    """Entry nodes that cannot yet see each other's loads (gossip lags) start the same
    cold model on the same host, wherever they are and whatever their coin says."""
    names = ("a", "b", "c", "d")
    picks = set()
    for here in names:
        hosts = [host(n, (Resident(B, 2.0),), local=n == here) for n in names]
        for seed in range(5):
            d = place(TaskNeeds(A, 100, size_gb=4.0), hosts, random.Random(seed))
            node = d.node_id if isinstance(d, SendTo) else here if isinstance(d, RunHere) else ""
            picks.add(node)
    assert len(picks) == 1


W = (Resident(A, 4.0),)  # A loaded; the task: A, 100 tokens = 2 s, 0.5 s a queued one
HERE = host("here", W, local=True)
# (case, hosts, saving of the conversation's host "conv", expected node)
AFFINITY = [
    ("a 5 s saving beats an idle host here", [HERE, host("conv", W, running=4)], 5.0, "conv"),
    ("a queue longer than the saving", [HERE, host("conv", W, queued=40, running=4)], 5, "here"),
    ("extra wait 1.0 s > saving 0.9 s", [HERE, host("conv", W, running=5)], 0.9, "here"),
    ("extra wait 1.0 s < saving 3.0 s", [HERE, host("conv", W, running=5)], 3.0, "conv"),
    # the saving counts as a shorter completion, so the margin that keeps work here holds
    ("saving 1.1 s over extra wait 1.0 s: not 20 % sooner", [HERE,
     host("conv", W, running=5)], 1.1, "here"),
    ("a saving on an idle peer beats a busy host here", [host("here", W, local=True, running=5),
     host("conv", W), host("p", W)], 0.6, "conv"),
    ("its host gone: placed as any request", [HERE, host("p", W)], 5.0, "here"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "hosts", "saving", "expected"), AFFINITY)
def test_conversation_host_wins_unless_its_extra_wait_exceeds_the_saving(
    case: str, hosts: list[Candidate], saving: float, expected: str
) -> None:
    task = TaskNeeds(A, 100, size_gb=4.0, prefer="conv", prefer_saving_s=saving)
    for seed in range(20):
        d = place(task, hosts, random.Random(seed))
        assert (d.node_id if isinstance(d, SendTo) else "here") == expected, case


def test_meta_round_trip_with_residency_fits_and_loaded_models_survive_a_cut() -> None:
    resident = (Resident(B, 4.7, 3, 1_700_000_000.0),)
    meta = NodeMeta("10.0.0.1:11435", (B, A), resident=resident, memory_gb=24.0, load_gbps=1.5)
    assert decode_meta(encode_meta(meta)) == meta
    models = tuple(f"some-rather-long-model-name-{i}:q4_K_M" for i in range(40))
    big = NodeMeta("h:1", models, resident=(Resident(models[-1], 9.0),), memory_gb=8.0)
    decoded = decode_meta(encode_meta(big))
    assert len(encode_meta(big)) <= MAX_META_BYTES
    assert decoded is not None and decoded.models_truncated
    assert decoded.resident == (Resident(models[-1], 9.0, 0, 4294967295.0),)
    unknown = decode_meta(encode_meta(NodeMeta("h:1", (A,))))
    assert unknown is not None and unknown.resident is None and unknown.memory_gb is None


def test_gossip_leaves_out_expired_idle_models_and_sent_work_counts_as_loaded() -> None:
    res = reader()
    res.apply([LoadedModel(A, 2_000_000_000, 990.0), LoadedModel(B, 2_000_000_000, 990.0)])
    res.begin(B)  # past its expiry but busy: Ollama keeps it
    meta = NodeMeta("h:1", (A, B), **gossiped(res, None, wall=lambda: 1000.0))
    seen = residency_of(meta)
    assert seen is not None and [r.model for r in seen.loaded] == [B]
    wire = decode_meta(encode_meta(meta))  # started requests travel with each model
    assert wire is not None and wire.resident is not None and wire.resident[0].served == 1
    sent = SentModels()
    sent.note("p", 7, A, 6.0)
    sent.note("p", 7, A, 6.0)
    with_a = with_sent(seen, sent.pending("p", 7))
    assert with_a is not None and with_a.resident(A) == Resident(A, 6.0, 2, served=2)
    assert with_a.used_gb() == 8.0  # what was sent takes its memory
    assert sent.pending("p", 8) == []  # a newer update supersedes it
    assert residency_of(NodeMeta("h:1", (A,))) is None


@pytest.mark.parametrize(
    ("payload", "unload"),
    [
        ({"model": A, "keep_alive": 0}, True),
        ({"model": A, "keep_alive": "0s"}, True),
        ({"model": A, "messages": [], "keep_alive": "0"}, True),
        ({"model": A, "prompt": "hi", "keep_alive": 0}, False),
        ({"model": A}, False),
        ({"model": A, "keep_alive": "10m"}, False),
        ({"model": A, "input": "x", "keep_alive": 0}, False),
    ],
)
def test_unload_is_keep_alive_zero_with_nothing_to_run(
    payload: dict[str, object], unload: bool
) -> None:
    assert is_unload(payload) is unload


def test_ps_parsing_and_load_duration_read_real_ollama_forms() -> None:
    doc = {
        "models": [
            {
                "name": "llama3.2",
                "size": 2_000_000_000,
                "expires_at": "2024-06-04T14:38:31.837539234-07:00",
            },
            {"model": "qwen2.5:7b", "size": 4_700_000_000, "expires_at": "2318-01-01T00:00:00Z"},
            "junk",
        ]
    }
    out = parse_ps(doc)
    assert out[0] == LoadedModel("llama3.2:latest", 2_000_000_000, pytest.approx(1717537111.837539))
    assert out[1].name == "qwen2.5:7b" and out[1].expires_at > 1e10
    assert parse_ps({"models": None}) == [] and parse_expiry("nope") == float("inf")
    assert load_duration_s(b'..."load_duration":1500000000,"eval_count":3}') == 1.5
    assert load_duration_s(b'{"done":true}') is None


def reader() -> LocalResidency:
    return LocalResidency(OllamaBackend("http://127.0.0.1:1"), wall=lambda: 1000.0)


def test_local_residency_times_loads_from_answers_and_the_next_ps_read() -> None:
    res = reader()
    res.apply([])
    assert res.known and res.load_gbps is None
    res.begin(A)
    assert res.active[A] == 1
    res.end(A, b'"load_duration":1000000000}')  # 1 s; its size comes with /api/ps
    assert A not in res.active and res.load_gbps is None
    res.apply([LoadedModel(A, 2_000_000_000, 1300.0)])
    assert res.load_gbps == pytest.approx(2.0)  # 2 GB in 1 s
    res.end(A, b'"load_duration":20000000}')  # 20 ms on a loaded model: nothing learned
    res.apply([LoadedModel(A, 2_000_000_000, 1300.0)])
    assert res.load_gbps == pytest.approx(2.0)


def test_a_warm_answer_before_the_next_read_does_not_hide_the_cold_load() -> None:
    """Two answers end before /api/ps is read again: the first loaded the model (1 s),
    the second found it loaded (~0 s). The host loads slowly, not instantly: taking the
    last answer's figure marked it instant, and its loads then looked free (the flake
    of tests/integration/test_residency.py: one host reloaded a model 5 times)."""
    res = reader()
    res.apply([])
    res.end(A, b'"load_duration":1000000000}')
    res.end(A, b'"load_duration":300000}')
    res.apply([LoadedModel(A, 2_000_000_000, 1300.0)])
    assert res.load_gbps == pytest.approx(2.0)


def test_what_the_mesh_must_know_kicks_an_announce_and_nothing_else_does() -> None:
    res = reader()
    res.apply([])
    res.changed.rearm()
    res.apply([])
    assert not res.changed.kicked  # nothing new
    res.apply([LoadedModel(A, 2_000_000_000, 1300.0)])
    assert res.changed.kicked  # a model appeared
    res.changed.rearm()
    res.apply([LoadedModel(A, 2_000_000_000, 1310.0)])
    assert not res.changed.kicked  # only its expiry moved
    res.end(A, b'"load_duration":1000000000}')
    res.apply([LoadedModel(A, 2_000_000_000, 1310.0)])
    assert res.changed.kicked  # the load rate was learned


def test_a_model_loaded_for_an_answer_in_no_time_marks_the_host_instant() -> None:
    res = reader()
    res.apply([])
    res.end(A, b'"load_duration":300000}')
    res.apply([LoadedModel(A, 2_000_000_000, 1300.0)])
    assert res.load_gbps is not None and load_s(Residency(load_gbps=res.load_gbps), 2.0) == 0


def test_memory_is_learned_only_once_an_eviction_shows_it_is_full() -> None:
    res = reader()
    res.apply([LoadedModel(A, 2_000_000_000, 1300.0), LoadedModel(B, 3_000_000_000, 1300.0)])
    res.apply([LoadedModel(A, 2_000_000_000, 1300.0)])  # B expired? no: nothing replaced it
    assert res.learned_memory_gb() is None  # no limit seen: a host may hold anything
    res.apply([LoadedModel(C, 1_000_000_000, 1300.0)])  # A gone 300 s early for C
    assert res.learned_memory_gb() == 5.0  # the most seen at once
    expired = reader()
    expired.apply([LoadedModel(A, 2_000_000_000, 990.0)])
    expired.apply([LoadedModel(B, 2_000_000_000, 1300.0)])  # A was past its expiry
    assert expired.learned_memory_gb() is None


def test_a_host_that_timed_no_load_keeps_its_own_work_though_a_peer_has_it_loaded() -> None:
    """Its loads may be instant (nothing says otherwise): the local-first rule holds, as
    for any host whose load costs nothing; only a timed load sends work elsewhere."""
    untimed = [host("here", local=True, gbps=None), host("p", (Resident(A, 4.0),), gbps=None)]
    d = place(TaskNeeds(A, 100, size_gb=4.0), untimed, random.Random(1))
    assert isinstance(d, RunHere)
    instant = [host("here", local=True, gbps=None), host("p", (Resident(A, 4.0),), gbps=5000.0)]
    assert isinstance(place(TaskNeeds(A, 100, size_gb=4.0), instant, random.Random(1)), RunHere)
    timed = [host("here", local=True, gbps=None), host("p", (Resident(A, 4.0),), gbps=2.0)]
    d = place(TaskNeeds(A, 100, size_gb=4.0), timed, random.Random(1))
    assert isinstance(d, SendTo) and d.node_id == "p"  # "here" borrows p's 2 GB/s


def test_cold_loads_go_to_the_emptier_of_near_equal_hosts() -> None:
    busy = host("busy", (Resident(B, 1.0), Resident(C, 1.0)), memory_gb=None)
    empty = host("empty", memory_gb=None)
    for seed in range(5):
        d = place(TaskNeeds(A, 100, size_gb=1.0), [busy, empty], random.Random(seed))
        assert isinstance(d, SendTo) and d.node_id == "empty"


class Board:
    """A mesh for the placement service: this node and peers, as gossip shows them."""

    def __init__(self, local: Candidate, peers: list[Candidate]) -> None:
        self.local, self.others = local, peers

    def local_candidate(self) -> Candidate:
        return self.local

    def peers(self) -> list[MemberLoad]:
        return [MemberLoad(c, "alive", 7) for c in self.others]


def test_the_service_counts_a_sent_model_as_loaded_there_and_remembers_conversations() -> None:
    warm = (Resident(B, 2.0),)
    here = replace(host("here", warm, local=True), models=frozenset({B}))  # A only on peers
    board = Board(here, [host("p", warm), host("q", warm)])
    svc = PlacementService("here", board, random.Random(1))
    first = svc.place(A, 100, known_gb=2.0)  # A is loaded nowhere: a load starts somewhere
    assert isinstance(first.decision, SendTo) and first.needs is not None
    svc.sent(first.decision.node_id, first.needs)
    seen = {c.node_id: c.residency for c in svc.peer_candidates()}
    sent_to = seen[first.decision.node_id]  # until gossip says so: A is loading there
    assert sent_to is not None and sent_to.resident(A) == Resident(A, 2.0, 1, served=1)
    assert all(r is not None and not r.has(A) for n, r in seen.items() if n != first.peer)
    chat = [{"role": "user", "content": "hi " * 200}]
    turn1 = svc.place(B, 100, payload={"model": B, "messages": chat})
    follow = [*chat, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}]
    turn2 = svc.place(B, 100, payload={"model": B, "messages": follow})
    assert turn2.needs is not None and turn2.needs.prefer == (turn1.peer or "here")
    assert turn2.needs.prefer_saving_s > 0


def test_a_conversations_host_is_credited_only_as_likely_as_its_cache_survived() -> None:
    """The saving is discounted by the requests the host started for the model since
    the turn (each overwrites a slot with some chance), and is nothing once the host
    no longer has the model loaded."""
    here = replace(host("here", local=True), models=frozenset({A}))  # B only on p

    def on_p(served: int, loaded: bool = True) -> list[Candidate]:
        return [host("p", (Resident(B, 2.0, 0, served=served),) if loaded else ())]

    chat = [{"role": "user", "content": "hi " * 400}]
    follow = [*chat, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "?"}]
    board = Board(here, on_p(5))
    svc = PlacementService("here", board, random.Random(1))
    first = svc.place(B, 100, payload={"model": B, "messages": chat})
    assert first.peer == "p"

    def credited(peers: list[Candidate]) -> float:
        board.others = peers  # p's next gossip
        placed = svc.place(B, 100, payload={"model": B, "messages": follow})
        assert placed.needs is not None and placed.needs.prefer == "p"
        return placed.needs.prefer_saving_s

    full = credited(on_p(6))  # only the first turn started there since
    assert full > 0
    assert credited(on_p(9)) == pytest.approx(full * SLOT_SURVIVAL**3)
    assert credited(on_p(9, loaded=False)) == 0.0


def test_a_count_of_hosts_for_a_pull_is_chosen_by_the_gossiped_free_memory() -> None:
    from meshlb.api.model_routes import mesh_hosts
    from meshlb.mesh.model_ops import select_targets
    from meshlb.mesh.view import Peer

    def peer(node_id: str, memory_gb: float | None, loaded: tuple[Resident, ...]) -> Peer:
        meta = NodeMeta("h:1", (B, C), resident=loaded, memory_gb=memory_gb)
        return Peer(node_id, "g:1", "alive", 1, 0.0, meta)

    full = peer("full", 24.0, (Resident(B, 20.0),))  # 4 GB free
    roomy = peer("roomy", 16.0, (Resident(C, 2.0),))  # 14 GB free
    hosts = mesh_hosts([full, roomy])
    assert [h.free_memory_gb for h in hosts] == [4.0, 14.0]
    assert select_targets("1", hosts, A) == ["roomy"]
    unknown = mesh_hosts([peer("u", None, ())])
    assert unknown[0].free_memory_gb is None


def test_a_forwarded_request_that_ended_no_longer_counts_as_queued_there() -> None:
    """Until the peer's next metadata update, what this node sent it counts as queued
    there, but only while it runs: a late update had made a peer look 5 requests deep
    after all 5 were answered, and placement sent a request to a host without the
    model instead (tests/integration/test_residency_deployed.py)."""
    warm = (Resident(B, 2.0),)
    here = replace(host("here", warm, local=True), models=frozenset({B}))
    board = Board(here, [host("p", (Resident(A, 2.0),))])
    svc = PlacementService("here", board, random.Random(1))
    placed = [svc.place(A, 100) for _ in range(3)]
    assert all(p.peer == "p" for p in placed)
    finishers = [svc.sent("p", p.needs) for p in placed]

    def seen() -> tuple[int, int, int]:
        (p,) = svc.peer_candidates()
        assert p.residency is not None
        resident = p.residency.resident(A)
        assert resident is not None  # it ran there: still loaded
        return p.queued, resident.active, resident.served

    assert seen() == (3, 3, 3)
    finishers[0]()
    finishers[1]()
    assert seen() == (1, 1, 3)  # still started there: affinity's count does not go back
    finishers[2]()
    assert seen() == (0, 0, 3)
