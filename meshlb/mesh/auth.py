"""Node-to-node HTTP authentication with the cluster key: an HMAC over the request.

Why: with `--cluster-key`, a request that claims to come from a peer (it carries the
hop header, or uses an internal path) must prove it knows the key; otherwise anyone
could inject work that skips placement. The MAC covers method, path, a SHA-256 of the
body and a timestamp; a stale timestamp (replay) or a bad MAC is refused with 401.
"""

from __future__ import annotations

import hashlib
import hmac

AUTH_HEADER = "x-meshlb-auth"
MAX_SKEW_S = 60.0


def _mac(key: str, method: str, path: str, body: bytes, timestamp: str) -> str:
    message = b"\n".join(
        [
            method.upper().encode(),
            path.encode(),
            hashlib.sha256(body).hexdigest().encode(),
            timestamp.encode(),
        ]
    )
    return hmac.new(hashlib.sha256(key.encode()).digest(), message, hashlib.sha256).hexdigest()


def sign(key: str, method: str, path: str, body: bytes, now: float) -> str:
    """The header value for a request sent at wall time `now`."""
    timestamp = f"{now:.3f}"
    return f"{timestamp}:{_mac(key, method, path, body, timestamp)}"


def verify(
    key: str, header: str | None, method: str, path: str, body: bytes, now: float
) -> str | None:
    """None if the header authenticates the request, else the reason it does not."""
    if not header or ":" not in header:
        return "missing node-to-node authentication (X-Meshlb-Auth)"
    timestamp, mac = header.split(":", 1)
    try:
        sent_at = float(timestamp)
    except ValueError:
        return "malformed X-Meshlb-Auth timestamp"
    if abs(now - sent_at) > MAX_SKEW_S:
        return "X-Meshlb-Auth timestamp is too old or in the future (clock skew or replay)"
    if not hmac.compare_digest(mac, _mac(key, method, path, body, timestamp)):
        return "X-Meshlb-Auth does not match (wrong cluster key?)"
    return None
