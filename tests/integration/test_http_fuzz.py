"""HTTP fuzz of one real node (issue 15, defects 3, 4 and 7): no client input is a 5xx,
a traceback, a hang or a dead node.

One `meshlb node` beside one `meshlb sim-ollama` (loopback). A hypothesis-driven fuzz
sends a few hundred requests over every route of SPEC.md (Ollama API, OpenAI paths,
the task API, mesh and node routes, the internal ownership route): valid bodies with
fields mutated to wrong types, huge numbers (2^63-1, 2^64, 1e400), lone surrogates,
JSON nested 500-200 000 deep (in `messages`, a top-level list, an unknown field),
unicode digits in headers and query (`X-Meshlb-Hops: ²`, `?limit=²`), NUL and other
odd task ids, random bytes and random headers. The fuzz does not stop at the first
bad answer: it collects every one and fails once at the end with the list, grouped
by route and status, so one run shows everything that is wrong.

Allowed 5xx are only SPEC's own: 503 with Retry-After (mesh full) and 504 (task
timeout, from a fuzzed X-Meshlb-Timeout-S). Everything else >= 500, a connection
closed without an answer, or no answer within REQUEST_TIMEOUT_S is a failure.

Explicit cases beside the fuzz: the issue's exact inputs one by one; bodies of exactly
32 MiB - 1 and 32 MiB (and one byte over: 413); Content-Length with Transfer-Encoding
(400 at once); 200 slow-header connections (closed by the node within ~10 s); clients
that hang up while uploading (no "unhandled error"); `num_predict` 2^63-1 on
`/api/chat` (the node still runs 5 s later), on one node and forwarded through a
2-node mesh.

After every test: the node still runs, answers a normal request, and its log since
the test began has no "Traceback" and no "unhandled error". A node that died is
restarted for the next test (its exit code and log tail are in the failure).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.procs import Proc, meshlb_node, sim_ollama, wait_until

pytestmark = pytest.mark.integration

MODEL = "llama3.2:1b"
EMBED = "nomic-embed-text"
MIB = 1024 * 1024
MAX_BODY = 32 * MIB  # the node's default --max-body-bytes (SPEC: 413 above)
REQUEST_TIMEOUT_S = 15.0
FUZZ_EXAMPLES = 600
BAD_LOG_MARKS = ("Traceback", "unhandled error")
I63 = 2**63 - 1
HUGE_INTS = (I63, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30, -(10**30))

# ---------------------------------------------------------------------------------------
# The node under test (restarted when a test killed it)


@dataclass
class NodeBox:
    """One sim-ollama and one node; `ensure()` restarts the pair when the node died."""

    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    node: Proc | None = None
    deaths: list[str] = field(default_factory=list)

    def start(self) -> Proc:
        self.stack.close()
        self.stack = contextlib.ExitStack()
        sim = self.stack.enter_context(sim_ollama(tokens_per_second=5000, parallel=8))
        self.node = self.stack.enter_context(meshlb_node(sim.url, node_id="fz1"))
        return self.node

    def ensure(self) -> Proc:
        if self.node is None:
            return self.start()
        code = self.node.popen.poll()
        if code is not None:
            self.deaths.append(f"exit code {code}; log tail:\n{self.node.log()[-3000:]}")
            return self.start()
        return self.node

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="module")
def box() -> Iterator[NodeBox]:
    b = NodeBox()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def node(box: NodeBox) -> Iterator[Proc]:
    """The running node, and after the test: alive, answering, no traceback logged."""
    n = box.ensure()
    mark = len(n.log())
    yield n
    check_node(n, mark)


def bad_log_lines(text: str) -> list[str]:
    """Each line with a bad mark; a plain-text traceback with its block (to the
    exception's own line, the first line that is not indented after the header)."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if not any(m in line for m in BAD_LOG_MARKS):
            continue
        block = [line[:600]]
        if line.startswith("Traceback"):
            for nxt in lines[i + 1 : i + 80]:
                block.append(nxt[:300])
                if not nxt.startswith((" ", "\t")):
                    break
            block = [*block[:1], "  ...", *block[-4:]] if len(block) > 6 else block
        found.append("\n".join(block))
    return found


def normal_request(url: str) -> httpx.Response:
    body = {"model": MODEL, "prompt": "hello", "stream": False, "options": {"num_predict": 3}}
    return httpx.post(f"{url}/api/generate", json=body, timeout=15)


def check_node(n: Proc, mark: int) -> None:
    """The node runs, answers a normal request with 200, and logged no traceback."""
    code = n.popen.poll()
    assert code is None, f"the node died (exit code {code}); log tail:\n{n.log()[-4000:]}"
    try:
        r = normal_request(n.url)
    except httpx.HTTPError as e:
        raise AssertionError(f"the node does not answer a normal request: {e!r}") from None
    assert r.status_code == 200, f"normal request after the test: {r.status_code} {r.text[:300]}"
    bad = bad_log_lines(n.log()[mark:])
    assert not bad, f"{len(bad)} bad log lines, e.g.:\n" + "\n".join(bad[:5])


# ---------------------------------------------------------------------------------------
# Raw HTTP over a socket (framing the clients refuse to send)


def port_of(n: Proc) -> int:
    return int(n.url.rsplit(":", 1)[1])


def raw_exchange(port: int, data: bytes, timeout_s: float) -> tuple[bytes, float]:
    """Send `data`, read until the peer closes, the head is complete or `timeout_s`;
    returns (bytes read, seconds until the first byte or the close)."""
    start = time.monotonic()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        s.settimeout(0.2)
        while time.monotonic() - start < timeout_s:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                break
    return got, time.monotonic() - start


def status_of(head: bytes) -> int | None:
    first = head.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[1].isdigit() else None


# ---------------------------------------------------------------------------------------
# Strategies


class Raw:
    """JSON text inserted verbatim (numbers Python cannot make, nesting past recursion)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'…' if len(self.text) > 40 else ''})"


def to_json(value: Any) -> str:
    """Like json.dumps (ASCII, so a lone surrogate is a "\\ud800" escape), with Raw."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def deep_list(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


def deep_object(depth: int) -> Raw:
    return Raw('{"a":' * depth + "1" + "}" * depth)


DEPTHS = (500, 1000, 5000, 50_000, 200_000)
SURROGATES = ("\ud800", "\udfff", "a\ud800b", "\udc00\ud800", "\ud83d")
ODD_STRINGS = ("", " ", "\x00", "²", "٣", "1e400", "NaN", "-1", "llama3.2:1b\x00", "😀" * 50)
ODD_TEXT = ("²", "¹²", "٣", "-1", "0", "11", "9" * 40, "1e400", "nan", "inf", "", " 5 ", "5.5")

nasty_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(HUGE_INTS),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([Raw("1e400"), Raw("-1e400"), Raw("NaN"), Raw("Infinity"), Raw("1" * 400)]),
    st.sampled_from((*SURROGATES, *ODD_STRINGS)),
    st.text(max_size=30),
)
nasty_value = st.one_of(
    nasty_scalar,
    st.sampled_from(DEPTHS).map(deep_list),
    st.sampled_from(DEPTHS).map(deep_object),
    st.lists(nasty_scalar, max_size=4),
    st.dictionaries(st.text(max_size=8), nasty_scalar, max_size=4),
)


def chat_messages() -> list[dict[str, Any]]:
    return [{"role": "user", "content": "hi"}]


TEMPLATES: dict[str, Callable[[], dict[str, Any]]] = {
    "generate": lambda: {"model": MODEL, "prompt": "hi", "stream": False, "options": {}},
    "chat": lambda: {"model": MODEL, "messages": chat_messages(), "stream": False},
    "embed": lambda: {"model": EMBED, "input": "hi"},
    "embeddings": lambda: {"model": EMBED, "prompt": "hi"},
    "show": lambda: {"model": MODEL, "verbose": False},
    "pull": lambda: {"model": MODEL, "stream": False},
    "create": lambda: {"model": "fuzz-made", "from": MODEL, "stream": False},
    "copy": lambda: {"source": MODEL, "destination": "fuzz-copy"},
    "delete": lambda: {"model": "fuzz-copy"},
    "oa_chat": lambda: {"model": MODEL, "messages": chat_messages(), "max_tokens": 3},
    "oa_completion": lambda: {"model": MODEL, "prompt": "hi", "max_tokens": 3},
    "oa_embed": lambda: {"model": EMBED, "input": "hi"},
    "task": lambda: {
        "kind": "generate",
        "model": MODEL,
        "request": {"prompt": "hi", "options": {"num_predict": 2}},
        "priority": 5,
        "timeout_s": 30,
    },
    "ownership": lambda: {"from": "x", "messages": []},
}
# Where a mutation may land in a body: top level, options, a message, a task's request.
FIELDS = (
    "model",
    "prompt",
    "messages",
    "stream",
    "options",
    "format",
    "system",
    "template",
    "raw",
    "keep_alive",
    "input",
    "truncate",
    "verbose",
    "max_tokens",
    "n",
    "temperature",
    "priority",
    "timeout_s",
    "idempotency_key",
    "kind",
    "request",
    "images",
    "tools",
    "unknown_field",
)
OPTION_FIELDS = ("num_predict", "num_ctx", "temperature", "seed", "top_k", "stop", "x")

ROUTES: tuple[tuple[str, str, str | None], ...] = (
    ("POST", "/api/generate", "generate"),
    ("POST", "/api/chat", "chat"),
    ("POST", "/api/embed", "embed"),
    ("POST", "/api/embeddings", "embeddings"),
    ("POST", "/api/show", "show"),
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("GET", "/api/version", None),
    ("POST", "/api/pull", "pull"),
    ("POST", "/api/push", "pull"),
    ("POST", "/api/create", "create"),
    ("POST", "/api/copy", "copy"),
    ("DELETE", "/api/delete", "delete"),
    ("HEAD", "/api/blobs/{digest}", None),
    ("POST", "/api/blobs/{digest}", None),
    ("POST", "/v1/chat/completions", "oa_chat"),
    ("POST", "/v1/completions", "oa_completion"),
    ("POST", "/v1/embeddings", "oa_embed"),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/{model}", None),
    ("POST", "/v1/tasks", "task"),
    ("GET", "/v1/tasks", None),
    ("GET", "/v1/tasks/{id}", None),
    ("DELETE", "/v1/tasks/{id}", None),
    ("GET", "/v1/peers", None),
    ("GET", "/v1/queue", None),
    ("GET", "/v1/cluster", None),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/", None),
    ("HEAD", "/", None),
    ("POST", "/v1/internal/ownership", "ownership"),
)

WEIGHTED_ROUTES = tuple(r for r in ROUTES for _ in range(3 if r[2] else 1))

# Path segments, already percent-encoded as they go on the wire.
ODD_SEGMENTS = (
    "t-%00",
    "t-%00x",
    "%00",
    "t-%ff",
    "t-%C2%B2",
    "t-%ED%A0%80",
    "..",
    "%2e%2e",
    "t-" + "a" * 5000,
    "t-%2F..%2F",
    "t-%",
    "t-%zz",
    "sha256:" + "0" * 64,
    "sha256:%00",
    "llama3.2:1b",
    "ghost",
)
segment = st.one_of(
    st.sampled_from(ODD_SEGMENTS),
    st.text(max_size=20).map(lambda s: urllib.parse.quote(s.encode("utf-8", "surrogatepass"))),
)

HEADER_NAMES = (
    "X-Meshlb-Priority",
    "X-Meshlb-Hops",
    "X-Meshlb-Timeout-S",
    "X-Meshlb-Hosts",
    "X-Meshlb-Auth",
    "Content-Type",
    "Accept",
    "Accept-Encoding",
    "Authorization",
    "Connection",
    "Expect",
    "X-Forwarded-For",
)
header_value = st.one_of(
    st.sampled_from(ODD_TEXT).map(lambda s: s.encode("latin-1", "replace")),  # '²' is b"\xb2"
    st.sampled_from(ODD_TEXT).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=20).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00")),
    st.sampled_from([b"application/json", b"text/plain", b"gzip", b"100-continue", b"close"]),
)
header_name = st.one_of(
    st.sampled_from(HEADER_NAMES),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(
        lambda s: "X-" + s
    ),
)
QUERY_KEYS = ("limit", "wait", "state", "scope", "local", "stream", "x")
query_value = st.one_of(
    st.sampled_from((*ODD_TEXT, "queued", "succeeded", "local", "mesh", "1", "1000", "1001")),
    st.text(max_size=10),
)


@dataclass
class FuzzRequest:
    method: str
    path: str  # percent-encoded
    query: list[tuple[str, str]]
    headers: list[tuple[bytes, bytes]]
    body: bytes
    what: str  # a short description of the body

    def show(self) -> str:
        q = ("?" + urllib.parse.urlencode(self.query)) if self.query else ""
        hs = ", ".join(f"{k.decode()}: {v!r}" for k, v in self.headers)
        return f"{self.method} {self.path[:120]}{q[:120]} [{hs[:200]}] body={self.what[:200]}"


@st.composite
def json_body(draw: st.DrawFn, template: str) -> tuple[bytes, str]:
    body: dict[str, Any] = TEMPLATES[template]()
    changes = []
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(("top", "top", "options", "message", "request")))
        value = draw(nasty_value)
        if where == "options":
            key = draw(st.sampled_from(OPTION_FIELDS))
            opts = body.get("options")
            body["options"] = {**(opts if isinstance(opts, dict) else {}), key: value}
            changes.append(f"options.{key}={value!r}"[:120])
        elif where == "message":
            key = draw(st.sampled_from(("role", "content", "images", "tool_calls", "x")))
            body["messages"] = [{"role": "user", "content": "hi", key: value}]
            changes.append(f"messages[0].{key}={value!r}"[:120])
        elif where == "request":
            key = draw(st.sampled_from(("prompt", "options", "messages", "input", "x")))
            req = body.get("request")
            body["request"] = {**(req if isinstance(req, dict) else {}), key: value}
            changes.append(f"request.{key}={value!r}"[:120])
        else:
            key = draw(st.sampled_from(FIELDS))
            body[key] = value
            changes.append(f"{key}={value!r}"[:120])
    return to_json(body).encode("ascii"), f"{template} {'; '.join(changes) or 'as is'}"


@st.composite
def any_body(draw: st.DrawFn, template: str | None) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(("json",) * 8 + ("raw", "deep", "deep", "other", "none")))
    if kind == "json" and template is not None:
        return draw(json_body(template))
    if kind == "raw":
        raw = draw(st.binary(max_size=300))
        return raw, f"random bytes {raw[:40]!r}"
    if kind == "deep":
        depth = draw(st.sampled_from(DEPTHS))
        shape = draw(st.sampled_from(("top-level list", "messages", "unknown field", "options")))
        base = TEMPLATES[template or "chat"]()
        if shape == "top-level list":
            return deep_list(depth).text.encode(), f"top-level list {depth} deep"
        if shape == "messages":
            base["messages"] = deep_list(depth)
        elif shape == "options":
            base["options"] = deep_object(depth)
        else:
            base["unknown_field"] = deep_object(depth)
        return to_json(base).encode(), f"{shape} {depth} deep"
    if kind == "other":
        text = draw(st.sampled_from(("[]", "1", '"x"', "null", "{", '{"model":', "{}", "\ufeff{}")))
        return text.encode("utf-8"), f"JSON-ish {text!r}"
    return b"", "empty"


@st.composite
def fuzz_request(draw: st.DrawFn) -> FuzzRequest:
    # Routes with a body are drawn three times as often: they have the most to get wrong.
    method, path, template = draw(st.sampled_from(WEIGHTED_ROUTES))
    if draw(st.integers(0, 19)) == 0:  # now and then the wrong method
        method = draw(st.sampled_from(("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")))
    for param in ("{id}", "{model}", "{digest}"):
        if param in path:
            path = path.replace(param, draw(segment))
    query = draw(st.lists(st.tuples(st.sampled_from(QUERY_KEYS), query_value), max_size=3))
    headers = [
        (k.encode("ascii"), v)
        for k, v in draw(st.lists(st.tuples(header_name, header_value), max_size=3))
    ]
    body, what = (b"", "none") if method in ("GET", "HEAD") else draw(any_body(template))
    if method == "GET" and draw(st.integers(0, 9)) == 0:
        body, what = draw(any_body(template))  # a GET with a body, now and then
    return FuzzRequest(method, path, query, headers, body, what)


# ---------------------------------------------------------------------------------------
# Sending and judging


@dataclass
class Outcome:
    status: int | None
    problem: str | None  # why this is a failure, or None
    excerpt: str = ""


def send(client: httpx.Client, url: str, req: FuzzRequest) -> Outcome:
    """Send one request; only the status matters, so the body is read only for a 5xx
    (a stream that began is closed at once, which the node sees as a client hang-up)."""
    headers = httpx.Headers(req.headers)
    try:
        with client.stream(
            req.method,
            url + req.path,
            params=tuple(req.query),
            headers=headers,
            content=req.body if req.body or req.method not in ("GET", "HEAD") else None,
        ) as r:
            status = r.status_code
            if status < 500:
                return Outcome(status, None)
            text = r.read()[:400].decode("utf-8", "replace")
    except httpx.TimeoutException:
        return Outcome(None, f"no answer within {REQUEST_TIMEOUT_S:g} s")
    except httpx.LocalProtocolError:
        return Outcome(None, None)  # h11 would not send it (e.g. a control byte in a header)
    except httpx.RemoteProtocolError as e:
        return Outcome(None, f"connection closed without an answer ({e})")
    except httpx.HTTPError as e:
        return Outcome(None, f"transport error {e!r}")
    if status == 503 and "retry-after" in r.headers:
        return Outcome(status, None)
    if status == 504:
        return Outcome(status, None)
    return Outcome(status, f"{status}", text)


def failure_report(failures: list[tuple[FuzzRequest, Outcome]], deaths: list[str]) -> str:
    groups: dict[tuple[str, str, str], list[tuple[FuzzRequest, Outcome]]] = {}
    for req, out in failures:
        route = req.path.split("?")[0]
        if route.startswith("/v1/tasks/"):
            route = "/v1/tasks/{id}"
        elif route.startswith("/v1/models/"):
            route = "/v1/models/{model}"
        elif route.startswith("/api/blobs/"):
            route = "/api/blobs/{digest}"
        groups.setdefault((req.method, route, out.problem or ""), []).append((req, out))
    lines = [f"{len(failures)} bad answers in {len(groups)} groups:"]
    for (method, route, problem), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        req, out = items[0]
        lines.append(f"  {len(items)} x {method} {route} -> {problem}")
        lines.append(f"      e.g. {req.show()}")
        if out.excerpt:
            lines.append(f"      answer: {out.excerpt[:200]!r}")
    for d in deaths:
        lines.append(f"  NODE DIED: {d[:1500]}")
    return "\n".join(lines)


def test_fuzz_every_route(box: NodeBox) -> None:
    """A few hundred seeded requests over every SPEC route; every bad answer collected."""
    n = box.ensure()
    deaths_before = len(box.deaths)
    marks = {id(n): (n, len(n.log()))}
    failures: list[tuple[FuzzRequest, Outcome]] = []
    statuses: Counter[int] = Counter()
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=5.0)
    with httpx.Client(timeout=timeout, trust_env=False) as client:

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # nothing raises: no shrinking
            suppress_health_check=list(HealthCheck),
        )
        @given(req=fuzz_request())
        def one(req: FuzzRequest) -> None:
            node = box.ensure()
            if id(node) not in marks:
                marks[id(node)] = (node, 0)
            out = send(client, node.url, req)
            if out.status is not None:
                statuses[out.status] += 1
            if out.problem is not None:
                failures.append((req, out))

        one()
    bad: list[str] = []
    for proc, mark in marks.values():
        bad += bad_log_lines(proc.log()[mark:])
    node = box.ensure()
    print(f"statuses: {dict(sorted(statuses.items()))}")
    report = failure_report(failures, box.deaths[deaths_before:])
    if bad:
        report += f"\n  {len(bad)} bad log lines, e.g.:\n" + "\n".join(
            "    " + b[:400] for b in bad[:6]
        )
    assert not failures and not bad and len(box.deaths) == deaths_before, report
    check_node(node, len(node.log()))


# ---------------------------------------------------------------------------------------
# The issue's inputs, one by one


def deep_chat(depth: int) -> bytes:
    return to_json({"model": MODEL, "messages": deep_list(depth), "stream": False}).encode()


EXPLICIT: list[tuple[str, str, bytes, dict[str, str]]] = [
    *(("POST", "/api/chat", deep_chat(d), {}) for d in (500, 200_000)),
    ("POST", "/api/generate", deep_list(100_000).text.encode(), {}),
    (
        "POST",
        "/v1/tasks",
        to_json({**TEMPLATES["task"](), "unknown": deep_object(5000)}).encode(),
        {},
    ),
    ("POST", "/v1/tasks", deep_list(200_000).text.encode(), {}),
    ("POST", "/api/show", to_json({"model": MODEL, "x": deep_list(5000)}).encode(), {}),
    ("POST", "/v1/chat/completions", deep_chat(5000), {}),
    ("POST", "/api/generate", to_json({"model": MODEL, "prompt": "\ud800"}).encode(), {}),
    (
        "POST",
        "/api/generate",
        to_json({"model": MODEL, "system": "\udfff", "prompt": "x"}).encode(),
        {},
    ),
    ("POST", "/api/embed", to_json({"model": EMBED, "input": "\ud800"}).encode(), {}),
    ("POST", "/v1/embeddings", to_json({"model": EMBED, "input": "\udfff"}).encode(), {}),
    ("POST", "/api/show", to_json({"model": MODEL, "verbose": "\udfff"}).encode(), {}),
    ("POST", "/api/show", to_json({"model": "\ud800"}).encode(), {}),
    ("POST", "/api/chat", to_json(TEMPLATES["chat"]()).encode(), {"X-Meshlb-Hops": "²"}),
    ("POST", "/api/chat", to_json(TEMPLATES["chat"]()).encode(), {"X-Meshlb-Priority": "²"}),
    ("POST", "/v1/tasks", to_json(TEMPLATES["task"]()).encode(), {"X-Meshlb-Priority": "²"}),
    (
        "POST",
        "/api/generate",
        to_json(TEMPLATES["generate"]()).encode(),
        {"X-Meshlb-Timeout-S": "²"},
    ),
    ("GET", "/v1/tasks?limit=%C2%B2", b"", {}),
    ("GET", "/v1/tasks/t-nope?wait=%C2%B2", b"", {}),
    ("GET", "/v1/tasks/t-%00", b"", {}),
    ("DELETE", "/v1/tasks/t-%00", b"", {}),
    *(
        (
            "POST",
            path,
            to_json(
                {**TEMPLATES[t](), "max_tokens": I63, "options": {"num_predict": I63}}
            ).encode(),
            {},
        )
        for path, t in (("/v1/chat/completions", "oa_chat"), ("/v1/completions", "oa_completion"))
    ),
    ("POST", "/api/show", to_json({"model": MODEL, "options": {"num_ctx": 2**64}}).encode(), {}),
    ("POST", "/api/show", to_json({"model": MODEL, "verbose": 2**64}).encode(), {}),
    (
        "POST",
        "/api/generate",
        b'{"model":"llama3.2:1b","prompt":"x","options":{"num_predict":1e400}}',
        {},
    ),
    ("POST", "/v1/tasks", to_json({**TEMPLATES["task"](), "priority": 2**64}).encode(), {}),
    ("POST", "/v1/tasks", to_json({**TEMPLATES["task"](), "timeout_s": Raw("1e400")}).encode(), {}),
    ("POST", "/v1/tasks", to_json({**TEMPLATES["task"](), "timeout_s": I63}).encode(), {}),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    EXPLICIT,
    ids=[f"{m} {p[:30]} {b[:40]!r} {h}" for m, p, b, h in EXPLICIT],
)
def test_issue_input_is_a_clear_4xx_or_an_answer(
    node: Proc, method: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    hs = [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]  # '²' is b"\xb2"
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        r = client.request(method, node.url + path, content=body or None, headers=hs)
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"


# ---------------------------------------------------------------------------------------
# Framing, sizes, slow and vanishing clients


def sized_body(size: int) -> bytes:
    """A JSON body of exactly `size` bytes: an unknown model and a long prompt."""
    head, tail = b'{"model":"ghost-fuzz:1b","stream":false,"prompt":"', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("size", [MAX_BODY - 1, MAX_BODY, MAX_BODY + 1])
def test_a_body_at_the_size_limit_gets_an_answer_at_once(node: Proc, size: int) -> None:
    body = sized_body(size)
    assert len(body) == size
    start = time.monotonic()
    r = httpx.post(
        f"{node.url}/api/generate",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=20,
    )
    took = time.monotonic() - start
    assert took < 10, f"{size} bytes answered only after {took:.1f} s ({r.status_code})"
    if size > MAX_BODY:
        assert r.status_code == 413, r.text[:200]
    else:
        assert r.status_code < 500 and r.status_code != 413, (r.status_code, r.text[:200])


@pytest.mark.parametrize(
    "body",
    [b'5\r\n{"a":\r\n0\r\n\r\n', b'{"a":"bb"}'],
    ids=["chunked body", "body framed by Content-Length"],
)
def test_content_length_with_transfer_encoding_is_400_at_once(node: Proc, body: bytes) -> None:
    """RFC 9112 6.1: both headers is an error. The second body has no chunk framing:
    a server that trusts Transfer-Encoding waits for a chunk-size line forever."""
    request = (
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    )
    head, took = raw_exchange(port_of(node), request, timeout_s=8)
    assert status_of(head) == 400, f"after {took:.1f} s: {head[:200]!r}"
    assert took < 2, f"400 only after {took:.1f} s"


def test_slow_header_connections_are_closed(node: Proc) -> None:
    """200 connections sending their headers one byte a second: the node closes them
    within ~10 s, and serves a normal request meanwhile."""
    n_conns, limit_s = 200, 12.0
    trickle = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    socks: list[socket.socket] = []
    closed_at: dict[int, float] = {}
    start = time.monotonic()
    try:
        for i in range(n_conns):
            try:
                s = socket.create_connection(("127.0.0.1", port_of(node)), timeout=2)
            except OSError:
                closed_at[i] = 0.0  # refused: a per-address cap is fine
                socks.append(socket.socket())
                continue
            s.setblocking(False)
            socks.append(s)
        served: int | str | None = None
        for sec in range(int(limit_s) + 1):
            for i, s in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    s.send(trickle[sec % len(trickle) : sec % len(trickle) + 1])
                    if s.recv(4096) == b"":
                        closed_at[i] = time.monotonic() - start
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[i] = time.monotonic() - start
            if sec == 3:
                try:
                    served = httpx.get(f"{node.url}/healthz", timeout=5).status_code
                except httpx.HTTPError as e:
                    served = repr(e)
            if len(closed_at) == n_conns:
                break
            time.sleep(max(0.0, start + sec + 1 - time.monotonic()))
    finally:
        for s in socks:
            s.close()
    still_open = n_conns - len(closed_at)
    latest = max(closed_at.values(), default=0.0)
    assert served == 200, f"a normal request during the slow connections: {served}"
    assert still_open == 0, f"{still_open} of {n_conns} still open after {limit_s:g} s"
    assert latest <= limit_s, latest


def test_a_client_that_hangs_up_while_uploading_is_no_error(node: Proc) -> None:
    for path in ("/api/chat", "/api/generate", "/v1/tasks", "/api/show", "/v1/embeddings"):
        for _ in range(3):
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n"
            ).encode()
            with socket.create_connection(("127.0.0.1", port_of(node)), timeout=3) as s:
                s.sendall(head + b'{"model": "llama3.2:1b", "prompt": "' + b"a" * 2000)
                time.sleep(0.05)
    time.sleep(1.0)  # the node notices; check_node reads its log afterwards


# ---------------------------------------------------------------------------------------
# The query of death (defect 3)
#
# The node's per-second announcer gossips the tokens-per-minute figure, which holds a
# running request's estimate (its num_predict) until the request ends: so the request
# must still run when the announcer fires. At 20 tokens/s the sim's natural 128-token
# reply takes ~6 s; the stream is kept open over the 5 s watch.

SLOW_TPS = 20.0
DEATH_CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "options": {"num_predict": I63},
}


def send_death_and_watch(entry: Proc, watched: dict[str, Proc]) -> None:
    """A streamed chat and an async task with num_predict 2^63-1 through `entry`; every
    watched node still runs 5 s later, answers a normal request and logged no traceback."""
    marks = {name: len(p.log()) for name, p in watched.items()}
    task = {"kind": "chat", "model": MODEL, "request": {**DEATH_CHAT, "stream": False}}
    t = httpx.post(f"{entry.url}/v1/tasks", json=task, timeout=20)
    assert t.status_code < 500, f"task: {t.status_code}: {t.text[:300]}"
    with httpx.stream("POST", f"{entry.url}/api/chat", json=DEATH_CHAT, timeout=20) as r:
        assert r.status_code < 500, f"chat: {r.status_code}: {r.read()[:300]!r}"
        lines = r.iter_lines()
        first = next(lines, "")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for name, p in watched.items():
                code = p.popen.poll()
                assert code is None, f"node {name} exit code {code}; log:\n{p.log()[-3000:]}"
            time.sleep(0.25)
        rest = [first, *lines] if r.status_code == 200 else []
    if rest:
        last = json.loads(rest[-1])
        assert last.get("done") is True or "error" in last, f"stream cut: {rest[-1][:200]}"
    for name, p in watched.items():
        code = p.popen.poll()
        assert code is None, f"node {name} exit code {code}; log tail:\n{p.log()[-3000:]}"
        assert normal_request(p.url).status_code == 200, name
        bad = bad_log_lines(p.log()[marks[name] :])
        assert not bad, f"node {name}: " + "\n".join(bad[:5])
        dropped = [x for x in p.log()[marks[name] :].splitlines() if "cannot be encoded" in x]
        assert not dropped, f"node {name}: " + "\n".join(dropped[:3])


def test_huge_num_predict_does_not_kill_the_node() -> None:
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(sim_ollama(tokens_per_second=SLOW_TPS))
        n = stack.enter_context(meshlb_node(sim.url, node_id="qd1"))
        send_death_and_watch(n, {"qd1": n})


def test_huge_num_predict_forwarded_through_a_mesh_kills_no_node() -> None:
    """A has no llama (only the embed model), B has it: A forwards the chat to B, and
    the task's copy travels between them."""
    with contextlib.ExitStack() as stack:
        sim_a = stack.enter_context(sim_ollama(models=EMBED, tokens_per_second=SLOW_TPS))
        sim_b = stack.enter_context(sim_ollama(models=MODEL, tokens_per_second=SLOW_TPS))
        a = stack.enter_context(meshlb_node(sim_a.url, node_id="fa"))
        b = stack.enter_context(
            meshlb_node(sim_b.url, "--join", f"127.0.0.1:{a.extra['gossip_port']}", node_id="fb")
        )

        def b_serves_llama_for_a() -> bool:
            peers = httpx.get(f"{a.url}/v1/peers", timeout=2).json()
            return any(p["id"] == "fb" and p["state"] == "alive" and p["models"] for p in peers)

        wait_until(b_serves_llama_for_a, 20, "A sees B alive with its models")
        send_death_and_watch(a, {"A": a, "B": b})
