"""The address a node gossips (issue 9, defect 2): never 0.0.0.0, never loopback by
accident; the interface toward the seed, else the primary address."""

from __future__ import annotations

import socket

import pytest

from meshlb import advertise
from meshlb.advertise import resolve_advertise
from meshlb.config import load_settings
from meshlb.ports import PortInUse, check_ports_free


def settings(**flags: object):  # type: ignore[no-untyped-def]
    return load_settings(None, flags, environ={})


def test_explicit_advertise_wins() -> None:
    assert resolve_advertise(settings(advertise="10.1.2.3")).host == "10.1.2.3"


def test_a_specific_bind_host_is_advertised() -> None:
    found = resolve_advertise(settings(http="10.1.2.3:11435"))
    assert (found.host, found.how) == ("10.1.2.3", "the HTTP bind address")


def test_bound_to_all_addresses_it_uses_the_route_toward_the_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(advertise, "route_source_toward", lambda h, p: "10.9.0.7")
    monkeypatch.setattr(advertise, "primary_address", lambda: "192.168.1.5")
    found = resolve_advertise(settings(join=("10.9.0.1:7946",)))
    assert found.host == "10.9.0.7" and "seed 10.9.0.1" in found.how and found.warning is None


def test_without_seeds_it_uses_the_primary_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(advertise, "primary_address", lambda: "192.168.1.5")
    found = resolve_advertise(settings())
    assert found.host == "192.168.1.5" and found.host not in ("0.0.0.0", "127.0.0.1")


def test_loopback_seeds_do_not_make_it_advertise_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(advertise, "primary_address", lambda: "192.168.1.5")
    assert resolve_advertise(settings(join=("127.0.0.1:7946",))).host == "192.168.1.5"


def test_loopback_toward_remote_peers_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    found = resolve_advertise(settings(http="127.0.0.1:11435", join=("10.9.0.1:7946",)))
    assert found.host == "127.0.0.1"
    assert found.warning is not None and "cannot reach this node" in found.warning


def test_the_real_route_lookup_finds_a_local_address() -> None:
    """On this machine: the source address toward loopback is loopback (no packet sent)."""
    assert advertise.route_source_toward("127.0.0.1", 9) == "127.0.0.1"


def test_a_port_in_use_is_one_sentence_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse) as caught:
            check_ports_free(("127.0.0.1", port), ("127.0.0.1", 0))
    assert str(caught.value) == f"cannot listen for HTTP on 127.0.0.1:{port}: already in use"


def test_a_gossip_port_in_use_names_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"gossip \\(UDP\\) on 127.0.0.1:{port}"):
            check_ports_free(("127.0.0.1", 0), ("127.0.0.1", port))
