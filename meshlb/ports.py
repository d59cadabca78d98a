"""Check that a node's ports are free before anything starts, in one sentence.

Why before: hypercorn and the gossip driver bind inside Trio nurseries, so a port in
use surfaces as a long ExceptionGroup after "gossip started" was already logged. A
probe bind of the same addresses (with the same SO_REUSEADDR the servers use) reports
the address and the cause first; the tiny race left (another process binding between
the probe and the real bind) still ends in one sentence via `first_os_error`.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(Exception):
    """A port this node needs cannot be bound; the message names it and why."""


def probe_bind(kind: str, host: str, port: int, sock_type: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, sock_type) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            why = "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise PortInUse(f"cannot listen for {kind} on {host}:{port}: {why}") from None


def check_ports_free(http: tuple[str, int], gossip: tuple[str, int]) -> None:
    """Raise PortInUse naming the first of HTTP (TCP), gossip (UDP, TCP) that is taken."""
    probe_bind("HTTP", *http, socket.SOCK_STREAM)
    probe_bind("gossip (UDP)", *gossip, socket.SOCK_DGRAM)
    probe_bind("gossip push-pull (TCP)", *gossip, socket.SOCK_STREAM)


def first_os_error(exc: BaseException) -> OSError | None:
    """The first OSError inside `exc` (an exception group, possibly nested)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_os_error(inner)
            if found is not None:
                return found
    return None
