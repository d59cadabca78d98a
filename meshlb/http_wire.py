"""HTTP/1.1 on the node's own hops, sans-I/O: a request's bytes, and a response reader
fed with bytes that hands back the head, then the body (de-chunked).

Why not h11 here: the hops go to the node's own Ollama and to other meshlb nodes
(trusted, and always framed the same way), and h11's per-event validation and state
machine were a fifth of the node's samples per proxied request (issue 13). The
server side, which faces any client, keeps h11 (`meshlb.http_server`).

Pure: no sockets, no clock; `meshlb.http_client` does the reading and writing.
What is checked: the status line, header syntax, a single Content-Length, chunk
sizes and the CRLF after each chunk; a head over `MAX_HEAD_BYTES` is refused. Body
framing follows RFC 9112 §6: chunked, else Content-Length, else 1xx/204/304 (and
answers to HEAD) have none, else the body runs to the close. Bytes of complete
chunks that arrived together come back as one piece, so a relay under load writes
one chunk where several were queued.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 1024


class WireError(Exception):
    """The upstream's answer is not valid HTTP/1.1 (or ended mid-message)."""


def request_bytes(
    method: bytes,
    target: bytes,
    host: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
) -> bytes:
    """One request, ready to write; header values may not hold CR or LF (no injection)."""
    parts = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method, target, host)]
    for name, value in headers:
        if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
            raise ValueError(f"header {name!r} holds a line break")
        parts.append(b"%s: %s\r\n" % (name, value))
    if body is not None:
        parts.append(b"content-length: %d\r\n" % len(body))
    parts.append(b"\r\n")
    if body:
        parts.append(body)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Head:
    """Status, headers (lower-case names; repeated ones joined with ", "), and whether
    the connection may carry another request after this answer."""

    status: int
    headers: dict[str, str]
    keep_alive: bool


class ResponseReader:
    """Feed bytes (b"" = the connection closed); `head()` then `body()` until done."""

    def __init__(self, head_request: bool = False) -> None:
        self._buf = bytearray()
        self._eof = False
        self._head_request = head_request
        self._head: Head | None = None
        self._mode = ""  # "length" | "chunked" | "close"
        self._left = 0  # length mode: body bytes to come; chunked: of this chunk
        self._need_crlf = False
        self._trailers = False
        self.done = False
        self.received_any = False

    def feed(self, data: bytes) -> None:
        if data:
            self._buf += data
            self.received_any = True
        else:
            self._eof = True

    def head(self) -> Head | None:
        """The final (non-1xx) head once it is complete, else None (feed more)."""
        while self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise WireError("response head too large")
                if self._eof:
                    raise WireError("closed before the response head")
                return None
            lines = bytes(self._buf[:end]).split(b"\r\n")
            del self._buf[: end + 4]
            status, version = _status_line(lines[0])
            if 100 <= status < 200:
                continue  # 100 Continue and friends: the real answer follows
            headers = _header_fields(lines[1:])
            self._head = self._framing(status, version, headers)
        return self._head

    def _framing(self, status: int, version: bytes, headers: dict[str, str]) -> Head:
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = version == b"HTTP/1.1" and "close" not in tokens
        te = headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        if te:
            if not te.rstrip().endswith("chunked"):
                self._mode, keep = "close", False
            else:
                self._mode = "chunked"
        elif self._head_request or status in (204, 304):
            self._mode, self._left = "length", 0
        elif length is not None:
            if not (length.isascii() and length.isdigit()):
                raise WireError(f"bad Content-Length {length[:30]!r}")
            self._mode, self._left = "length", int(length)
        else:
            self._mode, keep = "close", False
        if self._mode == "length" and self._left == 0:
            self.done = True
        return Head(status, headers, keep)

    def body(self) -> bytes:
        """The body bytes available now (may be b""); `done` says the body ended."""
        if self.done:
            return b""
        if self._mode == "length":
            take = min(self._left, len(self._buf))
            out = bytes(self._buf[:take])
            del self._buf[:take]
            self._left -= take
            if self._left == 0:
                self.done = True
            elif self._eof and not self._buf:
                raise WireError("closed mid-body")
            return out
        if self._mode == "close":
            out = bytes(self._buf)
            self._buf.clear()
            self.done = self._eof
            return out
        return self._chunks()

    def _chunks(self) -> bytes:
        out: list[bytes] = []
        buf = self._buf
        while True:
            if self._left:
                take = min(self._left, len(buf))
                if not take:
                    break
                out.append(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                self._need_crlf = self._left == 0
                continue
            line_end = buf.find(b"\r\n")
            if self._need_crlf:
                if len(buf) < 2:
                    break
                if line_end != 0:
                    raise WireError("chunk data not followed by CRLF")
                del buf[:2]
                self._need_crlf = False
                continue
            if line_end < 0:
                if len(buf) > MAX_CHUNK_LINE:
                    raise WireError("chunk size line too long")
                break
            line = bytes(buf[:line_end])
            del buf[: line_end + 2]
            if self._trailers:
                if not line:
                    self.done = True
                    break
                continue  # a trailer field: not used
            self._left = _chunk_size(line)
            self._trailers = self._left == 0
        if not self.done and self._eof:
            raise WireError("closed mid-body")
        return b"".join(out)


def _status_line(line: bytes) -> tuple[int, bytes]:
    parts = line.split(b" ", 2)
    version = parts[0]
    if len(parts) < 2 or not version.startswith(b"HTTP/1.") or len(parts[1]) != 3:
        raise WireError(f"bad status line {line[:60]!r}")
    try:
        return int(parts[1]), version
    except ValueError:
        raise WireError(f"bad status line {line[:60]!r}") from None


def _header_fields(lines: list[bytes]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise WireError(f"bad header line {line[:60]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if key in fields:
            if key == "content-length" and fields[key] != text:
                raise WireError("conflicting Content-Length headers")
            if key != "content-length":
                fields[key] = f"{fields[key]}, {text}"
        else:
            fields[key] = text
    return fields


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
        raise WireError(f"bad chunk size {line[:40]!r}")
    return int(digits, 16)
