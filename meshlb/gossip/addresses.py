"""Which gossip addresses we are willing to dial: checked before anything enters the core.

An address that arrives in a message (a ping-req target, an alive, a push-pull row) is
later handed to the OS as a destination. Anything the OS or Python's resolver would
choke on (a NUL byte raises ValueError in `sendto`, an over-long label a UnicodeError)
or that is never a member's address (unspecified, multicast, broadcast) is refused at
decode time, so one datagram cannot crash or misdirect a node.

Accepted hosts: an IPv4 literal in dotted-quad form, an IPv6 literal (an optional zone
id of letters, digits, '.', '-', '_'), or a DNS hostname (RFC 1123 labels of letters,
digits, '-' and, for container names, '_'; at most 253 characters; a last label that
is not all digits). Ports: 1-65535.
"""

from __future__ import annotations

import ipaddress
import re

MAX_HOST_CHARS = 253
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_ZONE = re.compile(r"[A-Za-z0-9._-]{1,32}\Z")
_IPV4ISH = re.compile(r"[0-9.]+\Z")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def valid_host(host: str) -> bool:
    """True for an IP literal or a DNS hostname that is safe to hand to the OS."""
    if not 0 < len(host) <= MAX_HOST_CHARS or not host.isascii():
        return False
    if ":" in host:
        return _valid_ipv6(host)
    if _IPV4ISH.match(host):
        return _valid_ipv4(host)
    return _valid_hostname(host)


def valid_port(port: int) -> bool:
    return 0 < port <= 65535


def _usable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Never a member's address: 0.0.0.0, ::, multicast, 255.255.255.255."""
    if ip.is_unspecified or ip.is_multicast:
        return False
    return ip != _BROADCAST


def _valid_ipv4(host: str) -> bool:
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:  # 999.1.1.1, 1.2.3, 01.2.3.4 ...
        return False
    return _usable(ip)


def _valid_ipv6(host: str) -> bool:
    literal, sep, zone = host.partition("%")
    if sep and not _ZONE.match(zone):
        return False
    try:
        ip = ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return _usable(ip)


def _valid_hostname(host: str) -> bool:
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    return not labels[-1].isdigit()
