"""Which address this node tells its peers to dial (SPEC: `--advertise`'s default).

A node bound to 0.0.0.0 must not gossip 0.0.0.0 or 127.0.0.1: peers on other hosts
could not reach it (a defect of the first wave). The order: `--advertise`; the bind
host when it is a specific address; the address of the interface that routes toward
the first non-loopback `--join` seed (a UDP `connect` asks the kernel's routing table
and sends no packet); the host's primary non-loopback IPv4 address; 127.0.0.1 only
as a last resort, with a warning.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import psutil

from meshlb.config import UNSPECIFIED_HOSTS, NodeSettings, parse_host_port


@dataclass(frozen=True, slots=True)
class Advertised:
    host: str
    how: str  # why this address, for the start-up log line
    warning: str | None = None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def resolve_ipv4(host: str) -> str | None:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    return str(infos[0][4][0]) if infos else None


def route_source_toward(host: str, port: int) -> str | None:
    """The local address the kernel would use to reach (host, port); no packet is sent."""
    target = resolve_ipv4(host)
    if target is None:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, port))
        except OSError:
            return None
        source = str(probe.getsockname()[0])
    return None if source in UNSPECIFIED_HOSTS else source


def primary_address() -> str | None:
    """The first non-loopback, non-link-local IPv4 address of an interface that is up."""
    stats = psutil.net_if_stats()
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name in stats and not stats[name].isup:
            continue
        for a in addrs:
            if a.family != socket.AF_INET:
                continue
            ip = ipaddress.ip_address(a.address)
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                return a.address
    return None


def resolve_advertise(settings: NodeSettings) -> Advertised:
    """The address to gossip, and how it was found (see the module docstring)."""
    seeds = [parse_host_port(s, default_host="127.0.0.1") for s in settings.join]
    remote_seeds = [(h, p) for h, p in seeds if not is_loopback(h)]
    if settings.advertise:
        found = Advertised(settings.advertise, "--advertise")
    elif settings.http_bind[0] not in UNSPECIFIED_HOSTS:
        found = Advertised(settings.http_bind[0], "the HTTP bind address")
    elif remote_seeds and (src := route_source_toward(*remote_seeds[0])) is not None:
        found = Advertised(src, f"the interface that routes toward seed {remote_seeds[0][0]}")
    elif (primary := primary_address()) is not None:
        found = Advertised(primary, "the primary non-loopback address")
    else:
        found = Advertised("127.0.0.1", "no non-loopback address found")
    if is_loopback(found.host) and remote_seeds:
        return Advertised(
            found.host,
            found.how,
            f"advertising loopback {found.host} to peers on other hosts "
            f"({', '.join(h for h, _ in remote_seeds)}): they cannot reach this node; "
            "set --advertise to an address they can dial",
        )
    return found
