"""Node-to-node HTTP authentication with the cluster key: an HMAC over the request.

Why: with `--cluster-key`, a request that claims to come from a peer (it carries the
hop header, `?local=1`, or uses an internal path) must prove it knows the key;
otherwise anyone could inject work that skips placement. The MAC covers the method,
the path with its query, a SHA-256 of the body, every header that changes what the
receiver does (priority, hops, deadline), a timestamp and a random nonce.

Replays: a stale timestamp is refused, and within the window each nonce is accepted
once (`ReplayGuard`), so a request captured on the wire and sent again byte for byte
is refused with 401 instead of running again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

AUTH_HEADER = "x-meshlb-auth"
MAX_SKEW_S = 60.0
# Headers that change what the receiver does: covered by the MAC (lower-case names).
COVERED_HEADERS = ("x-meshlb-priority", "x-meshlb-hops", "x-meshlb-timeout-s")


def new_nonce() -> str:
    return secrets.token_hex(12)


def _mac(
    key: str,
    method: str,
    path: str,
    body: bytes,
    timestamp: str,
    nonce: str,
    headers: Mapping[str, str],
) -> str:
    covered = [f"{h}={headers.get(h, '')}".encode() for h in COVERED_HEADERS]
    message = b"\n".join(
        [
            method.upper().encode(),
            path.encode(),
            hashlib.sha256(body).hexdigest().encode(),
            timestamp.encode(),
            nonce.encode(),
            *covered,
        ]
    )
    return hmac.new(hashlib.sha256(key.encode()).digest(), message, hashlib.sha256).hexdigest()


def sign(
    key: str,
    method: str,
    path: str,
    body: bytes,
    now: float,
    headers: Mapping[str, str] | None = None,
    nonce: str | None = None,
) -> str:
    """The header value for a request sent at wall time `now` with these `headers`."""
    timestamp, nonce = f"{now:.3f}", nonce or new_nonce()
    return f"{timestamp}:{nonce}:{_mac(key, method, path, body, timestamp, nonce, headers or {})}"


class ReplayGuard:
    """Nonces accepted within the skew window; a second use is a replay.

    Bounded: entries older than the window are dropped as new ones arrive, so memory
    is the window's request rate times `MAX_SKEW_S`, and `max_entries` caps even that."""

    def __init__(self, window_s: float = 2 * MAX_SKEW_S, max_entries: int = 200_000) -> None:
        self.window_s, self.max_entries = window_s, max_entries
        self._seen: dict[str, float] = {}  # nonce -> wall time first seen (insertion order)

    def first_use(self, nonce: str, now: float) -> bool:
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.window_s and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


def verify(
    key: str,
    header: str | None,
    method: str,
    path: str,
    body: bytes,
    now: float,
    headers: Mapping[str, str] | None = None,
    guard: ReplayGuard | None = None,
) -> str | None:
    """None if the header authenticates the request, else the reason it does not."""
    if not header or header.count(":") != 2:
        return "missing or malformed node-to-node authentication (X-Meshlb-Auth)"
    timestamp, nonce, mac = header.split(":")
    try:
        sent_at = float(timestamp)
    except ValueError:
        return "malformed X-Meshlb-Auth timestamp"
    if not abs(now - sent_at) <= MAX_SKEW_S:
        return "X-Meshlb-Auth timestamp is too old or in the future (clock skew or replay)"
    if not hmac.compare_digest(mac, _mac(key, method, path, body, timestamp, nonce, headers or {})):
        return "X-Meshlb-Auth does not match (wrong cluster key, or a changed request)"
    if guard is not None and not guard.first_use(nonce, now):
        return "X-Meshlb-Auth was used before (a replayed request)"
    return None
