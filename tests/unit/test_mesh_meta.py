"""Gossiped node metadata: round trip, size bound, garbage never raises."""

from hypothesis import given
from hypothesis import strategies as st

from meshlb.mesh.meta import MAX_META_BYTES, Load, NodeMeta, decode_meta, encode_meta


def test_round_trip() -> None:
    meta = NodeMeta(
        "10.0.0.1:11435",
        ("llama3.2:1b", "nomic-embed-text:latest"),
        Load(queued=3, running=2, max_concurrency=4, rpm_limit=60, rpm_used=7, tokens_per_s=42.5),
    )
    assert decode_meta(encode_meta(meta)) == meta


def test_many_models_are_cut_to_fit_and_flagged() -> None:
    models = tuple(f"some-rather-long-model-name-{i}:q4_K_M" for i in range(50))
    data = encode_meta(NodeMeta("h:1", models))
    assert len(data) <= MAX_META_BYTES
    decoded = decode_meta(data)
    assert decoded is not None and decoded.models_truncated
    assert 0 < len(decoded.models) < 50 and decoded.models == models[: len(decoded.models)]


@given(st.binary(max_size=600))
def test_garbage_decodes_to_none_or_meta(data: bytes) -> None:
    result = decode_meta(data)
    assert result is None or isinstance(result, NodeMeta)


def test_wrong_types_are_rejected() -> None:
    import msgpack

    assert decode_meta(msgpack.packb({"v": 1, "h": 5})) is None
    assert decode_meta(msgpack.packb({"v": 1, "h": "x", "lo": {"q": -1}})) is None
