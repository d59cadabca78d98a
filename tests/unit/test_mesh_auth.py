"""Node-to-node HMAC: right key passes; wrong key, tampering and replay fail."""

from meshlb.mesh.auth import sign, verify

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
    assert "malformed" in (verify(KEY, "abc:def", "POST", "/p", b"", now=1000.0) or "")
