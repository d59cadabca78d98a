"""Why gossip input was thrown away: one counter per reason, and a log throttle.

Every datagram or push-pull stream the node discards is counted under exactly one
reason, so an operator can tell a wrong cluster key (`auth_failed`) from a scanner
(`malformed`) from a replaying attacker (`replay`) from a bug (`handler_error`). The
node exports these as `meshlb_gossip_packets_dropped_total{reason}`. Pure: no clock;
the throttle takes `now`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MALFORMED = "malformed"  # not msgpack, wrong shape, wrong field types, truncated
OVERSIZED = "oversized"  # datagram over max_packet_bytes, stream frame over the cap
BAD_VERSION = "bad_version"  # a wire version we do not speak
UNKNOWN_TYPE = "unknown_type"  # a message type code we do not know
BAD_ADDRESS = "bad_address"  # host not an IP literal or DNS name, or port not 1-65535
BAD_NODE_ID = "bad_node_id"  # empty, over 128 characters, or control characters
AUTH_FAILED = "auth_failed"  # not sealed with any key of our keyring (or not sealed)
REPLAY = "replay"  # an authentic sealed packet seen before, or older than the window
HANDLER_ERROR = "handler_error"  # the core raised on a decoded message (a bug; dropped)
SEND_ERROR = "send_error"  # an outgoing datagram the OS refused (bad or unreachable addr)
STREAM_TIMEOUT = "stream_timeout"  # a push-pull peer that did not finish its frame in time

DROP_REASONS: tuple[str, ...] = (
    MALFORMED,
    OVERSIZED,
    BAD_VERSION,
    UNKNOWN_TYPE,
    BAD_ADDRESS,
    BAD_NODE_ID,
    AUTH_FAILED,
    REPLAY,
    HANDLER_ERROR,
    SEND_ERROR,
    STREAM_TIMEOUT,
)


class DropCounter:
    """Counts per reason; every known reason is present (at 0) so metrics keep their labels."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

    def add(self, reason: str, n: int = 1) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + n

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

    def __repr__(self) -> str:
        nonzero = {k: v for k, v in self._counts.items() if v}
        return f"DropCounter({nonzero})"


def merged(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum of several per-reason counts (the core's and the driver's)."""
    out = dict.fromkeys(DROP_REASONS, 0)
    for part in parts:
        for reason, n in part.items():
            out[reason] = out.get(reason, 0) + n
    return out


class LogThrottle:
    """At most one log line per reason per `interval_s`; says how many were held back.

    A flood of garbage must not become a flood of log lines (or of tracebacks): the
    first drop of a reason is logged at once, the rest of the interval only counted.
    """

    __slots__ = ("_held", "_next_at", "interval_s")

    def __init__(self, interval_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self._next_at: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, reason: str, now: float, n: int = 1) -> int | None:
        """None: stay silent. Otherwise log now; the int is how many were held back.

        `n` is how many drops this call stands for (counted when held back)."""
        if now < self._next_at.get(reason, -1e300):
            self._held[reason] = self._held.get(reason, 0) + n
            return None
        self._next_at[reason] = now + self.interval_s
        return self._held.pop(reason, 0)
