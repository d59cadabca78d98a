"""Node-to-node HMAC: right key passes; wrong key, tampering and replay fail."""

from meshlb.mesh.auth import ReplayGuard, sign, verify

KEY = "a-shared-cluster-key"


def test_valid_signature_passes() -> None:
    header = sign(KEY, "POST", "/api/chat", b"{}", now=1000.0)
    assert verify(KEY, header, "POST", "/api/chat", b"{}", now=1001.0) is None


def test_wrong_key_tampered_body_and_path_fail() -> None:
    header = sign(KEY, "POST", "/api/chat", b"{}", now=1000.0)
    assert "does not match" in (
        verify("other-key-123", header, "POST", "/api/chat", b"{}", 1000.0) or ""
    )
    assert verify(KEY, header, "POST", "/api/chat", b'{"x":1}', 1000.0) is not None
    assert verify(KEY, header, "POST", "/api/generate", b"{}", 1000.0) is not None


def test_replay_after_window_and_missing_header_fail() -> None:
    header = sign(KEY, "POST", "/p", b"", now=1000.0)
    assert "too old" in (verify(KEY, header, "POST", "/p", b"", now=1100.0) or "")
    assert "missing" in (verify(KEY, None, "POST", "/p", b"", now=1000.0) or "")
    assert "malformed" in (verify(KEY, "abc:x:def", "POST", "/p", b"", now=1000.0) or "")


def test_a_replay_within_the_window_is_refused() -> None:
    """Issue 15, defect 6: a captured request sent again byte for byte ran again."""
    guard = ReplayGuard()
    header = sign(KEY, "POST", "/api/generate", b"{}", now=1000.0)
    assert verify(KEY, header, "POST", "/api/generate", b"{}", 1000.3, guard=guard) is None
    again = verify(KEY, header, "POST", "/api/generate", b"{}", 1012.0, guard=guard)
    assert again is not None and "used before" in again


def test_behaviour_headers_are_covered() -> None:
    """The priority header was outside the MAC: changed to 10, still accepted."""
    sent = {"x-meshlb-priority": "5", "x-meshlb-hops": "1"}
    header = sign(KEY, "POST", "/api/generate", b"{}", 1000.0, sent)
    assert verify(KEY, header, "POST", "/api/generate", b"{}", 1000.0, sent) is None
    changed = {**sent, "x-meshlb-priority": "10"}
    assert verify(KEY, header, "POST", "/api/generate", b"{}", 1000.0, changed) is not None


def test_the_guard_forgets_what_is_older_than_its_window() -> None:
    guard = ReplayGuard(window_s=10.0)
    assert guard.first_use("n1", 0.0) and not guard.first_use("n1", 5.0)
    assert guard.first_use("n2", 20.0)  # n1 expired and dropped
    assert len(guard._seen) == 1
