"""`meshlb.http_wire`: the hop client's sans-I/O HTTP/1.1 response reader and request
writer. The body must come out the same however the bytes are split, framing errors
must be errors (never a silently short body), and a request cannot carry a line
break in a header (no injection)."""

from __future__ import annotations

import pytest

from meshlb.http_wire import Head, ResponseReader, WireError, request_bytes

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
)
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
CONTINUE_THEN_LENGTH = b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH


def read_all(wire: bytes, split: int, eof: bool = True) -> tuple[Head, bytes, bool]:
    """Feed `wire` in pieces of `split` bytes; the head, the body, whether it ended."""
    reader = ResponseReader()
    head: Head | None = None
    body = b""
    for i in range(0, len(wire), split):
        reader.feed(wire[i : i + split])
        if head is None:
            head = reader.head()
        if head is not None:
            body += reader.body()
    if eof and not reader.done:
        reader.feed(b"")
        if head is None:
            head = reader.head()
        body += reader.body()
    assert head is not None
    return head, body, reader.done


@pytest.mark.parametrize("wire", [CHUNKED, LENGTH, CONTINUE_THEN_LENGTH])
@pytest.mark.parametrize("split", [1, 2, 3, 7, 4096])
def test_body_is_the_same_however_the_bytes_are_split(wire: bytes, split: int) -> None:
    head, body, done = read_all(wire, split, eof=False)
    assert head.status == 200 and head.keep_alive and done
    assert body == b"hello world"


def test_complete_chunks_that_arrived_together_are_one_piece() -> None:
    reader = ResponseReader()
    reader.feed(CHUNKED)
    assert reader.head() is not None
    assert reader.body() == b"hello world" and reader.done


def test_header_names_are_lower_case_and_repeats_joined() -> None:
    head, _, _ = read_all(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n", 99)
    assert head.headers["x-a"] == "1, 2"


@pytest.mark.parametrize(
    ("wire", "keep_alive", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False, b"ok"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, b"ok"),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", False, b"until the end"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True, b""),
    ],
)
def test_framing_and_reuse(wire: bytes, keep_alive: bool, body: bytes) -> None:
    head, got, done = read_all(wire, 5)
    assert (head.keep_alive, got, done) == (keep_alive, body, True)


def test_an_answer_to_head_has_no_body() -> None:
    reader = ResponseReader(head_request=True)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert reader.head() is not None and reader.done and reader.body() == b""


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",  # closed mid-body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # mid-chunk
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad size
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",  # closed in the head
    ],
)
def test_broken_answers_are_errors_not_short_bodies(wire: bytes) -> None:
    with pytest.raises(WireError):
        read_all(wire, 4)


def test_a_huge_head_is_refused() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000)
    with pytest.raises(WireError):
        reader.head()


def test_request_bytes() -> None:
    out = request_bytes(b"POST", b"/api/chat", b"h:1", [(b"x-a", b"1")], b"{}")
    assert out == b"POST /api/chat HTTP/1.1\r\nhost: h:1\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n{}"
    with pytest.raises(ValueError):
        request_bytes(b"POST", b"/", b"h", [(b"x-a", b"1\r\nx-evil: 1")], None)
