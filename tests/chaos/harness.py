"""Chaos harness (issue 15), shared by `tests/chaos/test_chaos.py` (CI) and
`bench/chaos.py` (the long run): a keyed mesh in network namespaces under packet loss,
one node SIGKILLed every K seconds and restarted R seconds later, a careful client,
streamed chats, and a verdict read from every node.

The mesh: N network namespaces on one bridge (`tests.netns.netns_mesh`), each a "host"
with its own `meshlb sim-ollama` (0.0.0.0:11434) and `meshlb node` (its address, HTTP
11435, gossip 7946, `--cluster-key`, `--join` every other host, optional `--data-dir`).

Packet loss on every link: `tc qdisc add dev eth0 root netem loss P%` in each namespace
where the kernel has `sch_netem` (P% on every packet a namespace sends); otherwise an
nftables table per namespace with an input and an output chain on eth0 that each drop
`numgen random` below a threshold chosen so that a node-to-node packet (one output and
one input chain) is lost with P% (each chain drops 1 - sqrt(1 - P)). `Run.loss_method`
says which one ran. Both live in the namespaces, so they go with them; they are also
removed explicitly on exit, as are the processes (before the namespaces).

The client: submits keyed async tasks at a rate, each to a node picked at random; a
refused (503, connection refused) or cut (the connection broke, or no answer in time)
submission is retried with the SAME idempotency key on another node, bounded in count
and time; some accepted keys are submitted once more to another node (must give the
same id). Streamed chats go to random nodes; each ends complete (`done`), with an error
object, refused (no 200), or cut. A cut while the ENTRY node was being killed cannot be
told apart from the kill by any server and is counted apart ("cut_entry_killed"); any
other cut is silent and a failure.

The verdict, after the chaos: every node restarted and converged, accepted tasks given
`drain_s` to finish, then every accepted task read through every live node (mesh read)
and from every node's local copy (`GET /v1/tasks?scope=local&state=S&limit=1000`
per state; taken every `census_every_s` during the run too, so no list is over its
1000 cap and tasks that only a since-killed node held are seen): lost (not succeeded
through the mesh), inconsistent (reads or copies differ in state, node or result, or a
local copy on a live node is not final), duplicated (an idempotency key with two task
ids anywhere: any node's copies or any answer the client got); every node's exit codes
(only our SIGKILLs and 0 on the final SIGTERM are expected) and its logs (tracebacks,
"task accepted" with `held_by_a_peer: false` for tasks answered 202, time from each
kill to the first "member died" and the first take-over on a survivor).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.netns import NetnsMesh, netns_mesh
from tests.procs import meshlb_argv

MODEL = "llama3.2:1b"
SIM_PORT, HTTP_PORT, GOSSIP_PORT = 11434, 11435, 7946
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})
NFT_TABLE = "meshlb_chaos"
BAD_LOG_MARKS = ("Traceback", "unhandled error")


@dataclass
class ChaosConfig:
    nodes: int = 5
    duration_s: float = 120.0  # the chaos phase: submissions, streams, kills
    kill_every_s: float = 20.0  # a SIGKILL at every multiple of this (inside duration_s)
    restart_after_s: float = 10.0
    task_rate: float = 3.0  # submissions per second
    stream_every_s: float = 1.5
    loss_pct: float = 5.0
    data_dir: bool = False
    cluster_key: str = "chaos-cluster-key-issue-15"
    sim_tps: float = 40.0
    task_num_predict: tuple[int, int] = (8, 120)  # drawn per task: 0.2-3 s of work
    stream_num_predict: int = 100
    repeat_fraction: float = 0.1  # accepted keys sent once more, to another node
    submit_attempts: int = 10
    submit_give_up_s: float = 60.0
    drain_s: float = 60.0
    census_every_s: float = 20.0
    seed: int = 15
    extra_node_flags: tuple[str, ...] = ()
    log_dir: str | None = None  # copy every node life's log here


# ---------------------------------------------------------------------------------------
# Processes in namespaces


@dataclass
class Life:
    """One run of a node process."""

    popen: subprocess.Popen[bytes]
    log_path: str
    started: float
    killed: float | None = None  # our SIGKILL
    stopped: float | None = None  # our final SIGTERM

    @property
    def code(self) -> int | None:
        return self.popen.poll()


@dataclass
class Host:
    """Namespace i: its sim-ollama (never killed) and its node (killed, restarted)."""

    i: int
    name: str
    addr: str
    argv: list[str]
    workdir: str
    lives: list[Life] = field(default_factory=list)
    sim: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{HTTP_PORT}"

    @property
    def up(self) -> bool:
        return bool(self.lives) and self.lives[-1].code is None and self.lives[-1].killed is None

    def start(self) -> None:
        n = len(self.lives)
        log_path = os.path.join(self.workdir, f"{self.name}.{n}.log")
        with open(log_path, "wb") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.lives.append(Life(popen, log_path, time.time()))

    def kill(self) -> None:
        life = self.lives[-1]
        if life.code is None:
            life.popen.send_signal(signal.SIGKILL)
        life.killed = time.time()
        with contextlib.suppress(subprocess.TimeoutExpired):
            life.popen.wait(5)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (graceful leave), then SIGKILL after `timeout_s`."""
        for life in self.lives:
            if life.code is None and life is self.lives[-1] and life.killed is None:
                life.stopped = time.time()
                life.popen.send_signal(signal.SIGTERM)
        for life in self.lives:
            try:
                life.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                life.popen.kill()
                life.popen.wait(5)

    def logs(self) -> list[tuple[Life, str]]:
        out = []
        for life in self.lives:
            with open(life.log_path, encoding="utf-8", errors="replace") as f:
                out.append((life, f.read()))
        return out


def netns_run(mesh: NetnsMesh, i: int, *argv: str, stdin: str | None = None) -> tuple[int, str]:
    done = subprocess.run(
        mesh.exec_argv(i, list(argv)),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=15,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


# ---------------------------------------------------------------------------------------
# Packet loss


def ensure_nft() -> bool:
    """`nft` on PATH; as root, install the nftables package when it is missing."""
    if shutil.which("nft"):
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    print("nft missing: apt-get install -y nftables", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(["apt-get", "install", "-y", "-q", "nftables"], env=env, timeout=240)
    return shutil.which("nft") is not None


def nft_ruleset(per_chain: float) -> str:
    threshold = round(per_chain * 10_000)
    rule = f"numgen random mod 10000 < {threshold} counter drop"
    return (
        f"table inet {NFT_TABLE} {{\n"
        f"  chain input {{ type filter hook input priority 0; policy accept;"
        f' iifname "eth0" {rule}; }}\n'
        f"  chain output {{ type filter hook output priority 0; policy accept;"
        f' oifname "eth0" {rule}; }}\n'
        "}\n"
    )


def start_loss(mesh: NetnsMesh, loss_pct: float) -> str:
    """Loss on every namespace's eth0; returns a sentence saying which method runs.
    Raises RuntimeError when neither netem nor nftables can be used."""
    if loss_pct <= 0:
        return "no packet loss (--loss 0)"
    pct = f"{loss_pct:g}%"
    rc, out = netns_run(mesh, 0, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", pct)
    if rc == 0:
        for i in range(1, len(mesh.names)):
            rc, out = netns_run(
                mesh, i, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", pct
            )
            if rc != 0:
                raise RuntimeError(f"tc netem in namespace {i}: {out}")
        return f"tc netem: loss {pct} on every namespace's eth0 egress (sch_netem present)"
    netem_why = out.splitlines()[-1] if out else f"exit {rc}"
    if not ensure_nft():
        raise RuntimeError(f"no sch_netem ({netem_why}) and no nft to fall back to")
    per_chain = 1 - math.sqrt(1 - loss_pct / 100)
    ruleset = nft_ruleset(per_chain)
    for i in range(len(mesh.names)):
        rc, out = netns_run(mesh, i, "nft", "-f", "-", stdin=ruleset)
        if rc != 0:
            raise RuntimeError(f"nft in namespace {i}: {out}")
    return (
        f"nftables (no sch_netem: {netem_why}): table inet {NFT_TABLE} in every namespace, "
        f"input and output chains on eth0 each drop {per_chain * 100:.2f}% "
        f"(numgen random mod 10000 < {round(per_chain * 10_000)}), so {pct} of node-to-node "
        f"packets and {per_chain * 100:.2f}% each way between the client and a node"
    )


def loss_counters(mesh: NetnsMesh) -> dict[str, int]:
    """Packets the nft rules dropped per namespace (empty for netem)."""
    out: dict[str, int] = {}
    for i, ns in enumerate(mesh.names):
        rc, text = netns_run(mesh, i, "nft", "-j", "list", "table", "inet", NFT_TABLE)
        if rc != 0:
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            total = 0
            for item in json.loads(text)["nftables"]:
                for expr in item.get("rule", {}).get("expr", []):
                    if "counter" in expr:
                        total += int(expr["counter"]["packets"])
            out[ns] = total
    return out


def stop_loss(mesh: NetnsMesh) -> None:
    for i in range(len(mesh.names)):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            netns_run(mesh, i, "nft", "delete", "table", "inet", NFT_TABLE)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            netns_run(mesh, i, "tc", "qdisc", "del", "dev", "eth0", "root")


# ---------------------------------------------------------------------------------------
# Client records


@dataclass
class Submission:
    key: str
    entry_nodes: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # "n2:202", "n0:503", "n1:cut", …
    ids: set[str] = field(default_factory=set)  # every id any answer named
    accepted_id: str | None = None
    accepted_status: int | None = None
    accepted_at: float | None = None
    repeat_id: str | None = None  # the id a deliberate repeat got
    repeat_answer: str | None = None  # "n3:200", "n3:cut(ReadTimeout)", …
    gave_up: bool = False


@dataclass
class Stream:
    entry: str
    started: float
    ended: float = 0.0
    status: int | None = None
    lines: int = 0
    outcome: str = ""  # complete | error_object | refused | cut | cut_entry_killed
    detail: str = ""


@dataclass
class Kill:
    node: str
    at: float
    restarted_at: float | None = None
    detected_s: float | None = None  # kill -> first "member died" on a survivor
    suspected_s: float | None = None
    peer_gone_s: float | None = None  # kill -> first "peer gone: taking over its tasks"
    taken_over_s: float | None = None  # kill -> first task "taken over" after that


@dataclass
class Run:
    cfg: ChaosConfig
    mesh: NetnsMesh
    hosts: list[Host]
    workdir: str
    loss_method: str = ""
    t0: float = 0.0
    submissions: dict[str, Submission] = field(default_factory=dict)
    streams: list[Stream] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    # (node, task id) -> latest row of that node's local copy seen by a census
    census: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    census_errors: int = 0
    census_capped: int = 0
    loop_max_stall_s: float = 0.0  # the chaos clock's longest iteration (a busy machine)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, msg: str) -> None:
        print(f"[chaos +{time.time() - self.t0:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# Setting up


def node_argv(cfg: ChaosConfig, mesh: NetnsMesh, i: int, workdir: str) -> list[str]:
    joins: list[str] = []
    for j, addr in enumerate(mesh.addrs):
        if j != i:
            joins += ["--join", f"{addr}:{GOSSIP_PORT}"]
    flags = [
        "node",
        "--node-id",
        f"n{i}",
        "--http",
        f"{mesh.addrs[i]}:{HTTP_PORT}",
        "--gossip",
        f"{mesh.addrs[i]}:{GOSSIP_PORT}",
        "--cluster-key",
        cfg.cluster_key,
        "--log-format",
        "json",
        *joins,
        *cfg.extra_node_flags,
    ]
    if cfg.data_dir:
        flags += ["--data-dir", os.path.join(workdir, f"data-n{i}")]
    return mesh.exec_argv(i, meshlb_argv(*flags))


def wait_answer(url: str, timeout_s: float, procs: list[subprocess.Popen[bytes]]) -> bool:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0, trust_env=False) as c:
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                return False
            with contextlib.suppress(httpx.HTTPError):
                if c.get(url).status_code < 500:
                    return True
            time.sleep(0.1)
    return False


def peers_of(client: httpx.Client, host: Host) -> dict[str, str]:
    with contextlib.suppress(httpx.HTTPError, ValueError, TypeError, KeyError):
        rows = client.get(f"{host.url}/v1/peers", timeout=3).json()
        return {str(p["id"]): str(p["state"]) for p in rows}
    return {}


def converged(client: httpx.Client, hosts: list[Host]) -> bool:
    want = {f"n{h.i}" for h in hosts}
    for h in hosts:
        seen = peers_of(client, h)
        if {k for k, v in seen.items() if v == "alive"} != want:
            return False
    return True


def wait_converged(run: Run, timeout_s: float) -> float | None:
    start = time.monotonic()
    with httpx.Client(trust_env=False) as client:
        while time.monotonic() - start < timeout_s:
            if converged(client, run.hosts):
                return time.monotonic() - start
            time.sleep(0.3)
    return None


@contextlib.contextmanager
def chaos_mesh(cfg: ChaosConfig) -> Iterator[Run]:
    """The namespaces, loss, sims and nodes (converged); everything removed on exit:
    processes first, then the loss rules, then the namespaces (netns_mesh)."""
    workdir = tempfile.mkdtemp(prefix="meshlb-chaos-")
    with contextlib.ExitStack() as stack:
        mesh = stack.enter_context(netns_mesh(cfg.nodes))
        stack.callback(stop_loss, mesh)
        hosts = [
            Host(i, f"n{i}", mesh.addrs[i], node_argv(cfg, mesh, i, workdir), workdir)
            for i in range(cfg.nodes)
        ]
        run = Run(cfg, mesh, hosts, workdir, t0=time.time())

        def stop_all() -> None:
            for h in hosts:
                h.stop()
                if h.sim is not None and h.sim.poll() is None:
                    h.sim.terminate()
                    try:
                        h.sim.wait(5)
                    except subprocess.TimeoutExpired:
                        h.sim.kill()
                        h.sim.wait(5)

        stack.callback(stop_all)
        run.loss_method = start_loss(mesh, cfg.loss_pct)
        run.log(f"packet loss: {run.loss_method}")
        for h in hosts:
            sim_argv = meshlb_argv(
                "sim-ollama",
                "--host",
                "0.0.0.0",
                "--port",
                str(SIM_PORT),
                "--models",
                MODEL,
                "--tokens-per-second",
                str(cfg.sim_tps),
                "--parallel",
                "4",
            )
            log = open(os.path.join(workdir, f"sim-n{h.i}.log"), "wb")  # noqa: SIM115
            stack.callback(log.close)
            h.sim = subprocess.Popen(
                mesh.exec_argv(h.i, sim_argv), stdout=log, stderr=subprocess.STDOUT
            )
        for h in hosts:
            assert h.sim is not None
            if not wait_answer(f"http://{h.addr}:{SIM_PORT}/api/version", 60, [h.sim]):
                raise RuntimeError(f"sim-ollama in namespace {h.i} did not start")
        for h in hosts:
            h.start()
        for h in hosts:
            if not wait_answer(f"{h.url}/healthz", 60, [h.lives[-1].popen]):
                tail = h.logs()[-1][1][-3000:]
                raise RuntimeError(f"node {h.name} did not start:\n{tail}")
        took = wait_converged(run, 60)
        if took is None:
            raise RuntimeError("the mesh did not converge within 60 s")
        run.log(f"{cfg.nodes} nodes converged in {took:.1f} s (workdir {workdir})")
        try:
            yield run
        finally:
            if cfg.log_dir:
                Path(cfg.log_dir).mkdir(parents=True, exist_ok=True)
                stop_all()
                for name in os.listdir(workdir):
                    if name.endswith(".log"):
                        shutil.copy(os.path.join(workdir, name), cfg.log_dir)
    shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The chaos phase


def task_body(cfg: ChaosConfig, key: str, rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(("generate", "generate", "chat"))
    options = {"num_predict": rng.randint(*cfg.task_num_predict)}
    request: dict[str, Any] = {"options": options}
    if kind == "chat":
        request["messages"] = [{"role": "user", "content": f"chaos {key}"}]
    else:
        request["prompt"] = f"chaos {key}"
    return {
        "kind": kind,
        "model": MODEL,
        "request": request,
        "priority": rng.randint(1, 10),
        "idempotency_key": key,
    }


def submit_keyed(run: Run, client: httpx.Client, sub: Submission, body: dict[str, Any]) -> None:
    """Submit until a node accepts; a refusal or a cut goes to another node, same key."""
    rng = random.Random(sub.key)
    order = list(run.hosts)
    rng.shuffle(order)
    give_up = time.monotonic() + run.cfg.submit_give_up_s
    for attempt in range(run.cfg.submit_attempts):
        if time.monotonic() > give_up:
            break
        host = order[attempt % len(order)]
        sub.entry_nodes.append(host.name)
        try:
            r = client.post(f"{host.url}/v1/tasks", json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            sub.answers.append(f"{host.name}:refused")
            continue
        except httpx.HTTPError as e:  # cut: the answer may or may not have been 202
            sub.answers.append(f"{host.name}:cut({type(e).__name__})")
            continue
        sub.answers.append(f"{host.name}:{r.status_code}")
        tid = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            tid = str(r.json()["id"]) if r.status_code in (200, 202) else None
        if tid is not None:
            sub.ids.add(tid)
            sub.accepted_id, sub.accepted_status = tid, r.status_code
            sub.accepted_at = time.time()
            return
        if r.status_code in (503, 502, 504):
            with contextlib.suppress(ValueError):
                time.sleep(min(2.0, float(r.headers.get("retry-after", "0.5"))))
            continue
        return  # a 4xx: the client's own mistake; nothing to retry
    sub.gave_up = True


def repeat_keyed(run: Run, client: httpx.Client, sub: Submission, body: dict[str, Any]) -> None:
    """The same key once more, to a node it was not accepted on: must name the same id."""
    others = [h for h in run.hosts if h.name != sub.entry_nodes[-1] and h.up]
    if not others:
        return
    host = random.Random(sub.key + "r").choice(others)
    try:
        r = client.post(f"{host.url}/v1/tasks", json=body)
    except httpx.HTTPError as e:
        sub.repeat_answer = f"{host.name}:cut({type(e).__name__})"
        return
    sub.repeat_answer = f"{host.name}:{r.status_code}"
    with contextlib.suppress(ValueError, KeyError, TypeError):
        if r.status_code in (200, 202):
            sub.repeat_id = str(r.json()["id"])
            sub.ids.add(sub.repeat_id)


def one_submission(run: Run, client: httpx.Client, key: str, rng: random.Random) -> None:
    body = task_body(run.cfg, key, rng)
    sub = Submission(key)
    with run.lock:
        run.submissions[key] = sub
    submit_keyed(run, client, sub, body)
    if sub.accepted_id is not None and rng.random() < run.cfg.repeat_fraction:
        repeat_keyed(run, client, sub, body)


def one_stream(run: Run, client: httpx.Client, host: Host, n: int) -> None:
    s = Stream(entry=host.name, started=time.time())
    with run.lock:
        run.streams.append(s)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"stream {n}"}],
        "options": {"num_predict": run.cfg.stream_num_predict},
    }
    last: dict[str, Any] = {}
    try:
        with client.stream("POST", f"{host.url}/api/chat", json=body) as r:
            s.status = r.status_code
            if r.status_code != 200:
                s.outcome, s.detail = "refused", r.read()[:200].decode("utf-8", "replace")
            else:
                for line in r.iter_lines():
                    if not line.strip():
                        continue
                    s.lines += 1
                    try:
                        last = json.loads(line)
                    except ValueError:
                        s.outcome, s.detail = "cut", f"not JSON: {line[:100]!r}"
                        break
                    if "error" in last:
                        s.outcome, s.detail = "error_object", str(last["error"])[:200]
                        break
                    if last.get("done") is True:
                        s.outcome = "complete"
                        break
    except (httpx.ConnectError, httpx.ConnectTimeout):
        s.outcome = "refused"
        s.detail = "connection refused"
    except httpx.HTTPError as e:
        s.detail = f"{type(e).__name__}: {e}"[:200]
    if not s.outcome:
        s.outcome = "cut"
        s.detail = s.detail or f"ended after {s.lines} lines without done or an error"
    s.ended = time.time()


def census(
    run: Run,
    client: httpx.Client,
    hosts: list[Host],
    into: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> None:
    """Every node's local copies, per state (each list under its 1000 cap), into
    `run.census` (the union over the run) and `into` when given."""
    for h in hosts:
        for state in STATES:
            try:
                r = client.get(
                    f"{h.url}/v1/tasks",
                    params={"scope": "local", "state": state, "limit": "1000"},
                    timeout=10,
                )
                rows = r.json()["tasks"] if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                rows = None
            with run.lock:
                if rows is None:
                    run.census_errors += 1
                    continue
                if len(rows) >= 1000:
                    run.census_capped += 1
                for row in rows:
                    if isinstance(row, dict) and isinstance(row.get("id"), str):
                        run.census[(h.name, row["id"])] = row
                        if into is not None:
                            into[(h.name, row["id"])] = row


def chaos_phase(run: Run) -> None:
    """Submissions, streams, kills and restarts, all on one clock, for cfg.duration_s."""
    cfg = run.cfg
    rng = random.Random(cfg.seed)
    start = time.monotonic()
    run.t0 = time.time()
    next_task = next_stream = 0
    next_kill = 1
    next_census = cfg.census_every_s
    pending_restarts: list[tuple[float, Host, Kill]] = []
    timeout = httpx.Timeout(20.0, connect=3.0)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    workers = max(16, int(cfg.task_rate * 8))
    with (
        httpx.Client(timeout=timeout, limits=limits, trust_env=False) as client,
        cf.ThreadPoolExecutor(workers, thread_name_prefix="chaos-submit") as submits,
        cf.ThreadPoolExecutor(12, thread_name_prefix="chaos-stream") as streams,
        cf.ThreadPoolExecutor(1, thread_name_prefix="chaos-census") as censuses,
    ):
        census_job: cf.Future[None] | None = None
        last = 0.0
        while True:
            now = time.monotonic() - start
            run.loop_max_stall_s = max(run.loop_max_stall_s, now - last)
            last = now
            if now >= cfg.duration_s:
                break
            while next_task < cfg.task_rate * now:
                key = f"chaos-{cfg.seed}-{next_task}"
                submits.submit(one_submission, run, client, key, random.Random(key))
                next_task += 1
            if cfg.stream_every_s > 0 and next_stream * cfg.stream_every_s <= now:
                host = rng.choice(run.hosts)
                streams.submit(one_stream, run, client, host, next_stream)
                next_stream += 1
            if next_kill * cfg.kill_every_s <= now:
                next_kill += 1
                candidates = [h for h in run.hosts if h.up]
                if len(candidates) == len(run.hosts):  # one down at a time
                    victim = rng.choice(candidates)
                    victim.kill()
                    k = Kill(victim.name, victim.lives[-1].killed or time.time())
                    run.kills.append(k)
                    pending_restarts.append((now + cfg.restart_after_s, victim, k))
                    run.log(f"SIGKILL {victim.name} (kill {len(run.kills)})")
            for item in list(pending_restarts):
                due, host, k = item
                if due <= now:
                    pending_restarts.remove(item)
                    host.start()
                    k.restarted_at = time.time()
                    run.log(f"restarted {host.name}")
            if now >= next_census and (census_job is None or census_job.done()):
                next_census = now + cfg.census_every_s
                census_job = censuses.submit(census, run, client, [h for h in run.hosts if h.up])
            time.sleep(0.02)
        run.log(f"chaos phase over: {next_task} keys submitted, {next_stream} streams")
        for _, host, k in pending_restarts:
            remaining = k.at + cfg.restart_after_s - time.time()
            if remaining > 0:
                time.sleep(remaining)
            host.start()
            k.restarted_at = time.time()
            run.log(f"restarted {host.name}")
    # the executors waited for every submission and stream (each bounded in time)


# ---------------------------------------------------------------------------------------
# The verdict


def canon(row: dict[str, Any]) -> tuple[Any, Any, str]:
    return row.get("state"), row.get("node"), json.dumps(row.get("result"), sort_keys=True)


def drain(run: Run, client: httpx.Client, ids: list[str]) -> list[str]:
    """Wait (bounded) until every accepted task is final through the mesh; the ids that
    are still not."""
    deadline = time.monotonic() + run.cfg.drain_s
    pending = list(ids)
    n = 0
    while pending and time.monotonic() < deadline:
        still = []
        for tid in pending:
            host = run.hosts[n % len(run.hosts)]
            n += 1
            try:
                r = client.get(f"{host.url}/v1/tasks/{tid}", timeout=10)
                final = r.status_code == 200 and r.json().get("state") in FINAL
            except (httpx.HTTPError, ValueError):
                final = False
            if not final:
                still.append(tid)
        pending = still
        if pending:
            time.sleep(1.0)
    return pending


def mesh_reads(run: Run, client: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    """{task id: {node: row or "status N" / "error"}} through every node."""
    out: dict[str, dict[str, Any]] = {tid: {} for tid in ids}

    def read(tid: str, host: Host) -> None:
        try:
            r = client.get(f"{host.url}/v1/tasks/{tid}", timeout=15)
            value: Any = r.json() if r.status_code == 200 else f"status {r.status_code}"
        except (httpx.HTTPError, ValueError) as e:
            value = f"error {type(e).__name__}"
        out[tid][host.name] = value

    with cf.ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(read, tid, h) for tid in ids for h in run.hosts]:
            f.result()
    return out


def parse_ts(line: dict[str, Any]) -> float | None:
    with contextlib.suppress(KeyError, ValueError, TypeError):
        return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()
    return None


@dataclass
class LogFacts:
    bad_lines: list[str] = field(default_factory=list)
    unheld_accepts: set[str] = field(default_factory=set)  # "task accepted", held false
    refused_unreplicated: int = 0
    died: list[tuple[float, str, str]] = field(default_factory=list)  # (ts, seen by, node)
    suspected: list[tuple[float, str, str]] = field(default_factory=list)
    took_over: list[tuple[float, str]] = field(default_factory=list)  # (ts, on node)
    peer_gone: list[tuple[float, str, str]] = field(default_factory=list)  # (ts, on, peer)
    disconnect_logs: int = 0


def read_logs(run: Run) -> LogFacts:
    facts = LogFacts()
    for h in run.hosts:
        for life, text in h.logs():
            lines = text.splitlines()
            for idx, raw in enumerate(lines):
                if any(m in raw for m in BAD_LOG_MARKS):
                    block = raw[:500]
                    if raw.startswith("Traceback"):
                        block += (
                            " | " + " | ".join(x.strip() for x in lines[idx + 1 : idx + 40])[-600:]
                        )
                    facts.bad_lines.append(f"{h.name} life {h.lives.index(life)}: {block}")
                if not raw.startswith("{"):
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                event = line.get("event")
                ts = parse_ts(line)
                if event == "task accepted" and line.get("held_by_a_peer") is False:
                    facts.unheld_accepts.add(str(line.get("task")))
                elif event == "task refused: no second node held it in time":
                    facts.refused_unreplicated += 1
                elif event == "member died" and ts is not None:
                    facts.died.append((ts, h.name, str(line.get("node"))))
                elif event == "member suspected" and ts is not None:
                    facts.suspected.append((ts, h.name, str(line.get("node"))))
                elif (
                    event == "task now owned here"
                    and "taken" in str(line.get("reason"))
                    and ts is not None
                ):
                    facts.took_over.append((ts, h.name))
                elif event == "peer gone: taking over its tasks" and ts is not None:
                    facts.peer_gone.append((ts, h.name, str(line.get("peer"))))
                elif event == "client disconnected, task cancelled":
                    facts.disconnect_logs += 1
    return facts


def kill_timings(run: Run, facts: LogFacts) -> None:
    for i, k in enumerate(run.kills):
        nxt = run.kills[i + 1].at if i + 1 < len(run.kills) else math.inf
        died = [ts - k.at for ts, by, who in facts.died if who == k.node and by != k.node]
        died = [d for d in died if 0 <= d < nxt - k.at]
        sus = [ts - k.at for ts, by, who in facts.suspected if who == k.node and by != k.node]
        sus = [d for d in sus if 0 <= d < nxt - k.at]
        gone = [ts - k.at for ts, on, peer in facts.peer_gone if peer == k.node and on != k.node]
        k.peer_gone_s = min((d for d in gone if 0 <= d < nxt - k.at), default=None)
        took = [ts - k.at for ts, on in facts.took_over if on != k.node]
        after = k.peer_gone_s if k.peer_gone_s is not None else 0.0
        k.detected_s = min(died, default=None)
        k.suspected_s = min(sus, default=None)
        k.taken_over_s = min((d for d in took if after <= d < nxt - k.at), default=None)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def verdict(run: Run) -> dict[str, Any]:
    """Restart what is down, converge, drain, read everything, stop, read the logs."""
    cfg = run.cfg
    for h in run.hosts:
        if not h.up:
            h.start()
    conv = wait_converged(run, 60)
    run.log(f"converged after the chaos: {conv is not None} ({conv or 0:.1f} s)")
    subs = list(run.submissions.values())
    accepted = [s for s in subs if s.accepted_id is not None]
    ids = sorted({s.accepted_id for s in accepted if s.accepted_id})
    with httpx.Client(timeout=httpx.Timeout(15.0, connect=3.0), trust_env=False) as client:
        started = time.monotonic()
        not_final = drain(run, client, ids)
        run.log(f"drain: {len(ids) - len(not_final)}/{len(ids)} final")
        drain_s = time.monotonic() - started
        final_census: dict[tuple[str, str], dict[str, Any]] = {}
        census(run, client, run.hosts, final_census)
        reads = mesh_reads(run, client, ids)
        run.log("mesh reads done")
    loss_drops = loss_counters(run.mesh)
    for h in run.hosts:
        h.stop()
    facts = read_logs(run)
    kill_timings(run, facts)

    # per task: mesh reads through every node, local copies on every node (final census)
    live = {h.name for h in run.hosts}
    lost, failed, succeeded, inconsistent, local_not_final = [], [], [], [], []
    for tid in ids:
        rows = reads[tid]
        good = [v for v in rows.values() if isinstance(v, dict)]
        states = {canon(v) for v in good}
        final_local = {}
        for node in live:
            row = final_census.get((node, tid))
            if row is not None:
                final_local[node] = row
        if not good or all(v.get("state") not in FINAL for v in good):
            lost.append({"id": tid, "reads": {k: str(v)[:120] for k, v in rows.items()}})
            continue
        bad_reads = {k: v for k, v in rows.items() if not isinstance(v, dict)}
        nonfinal_locals = {
            k: v.get("state") for k, v in final_local.items() if v.get("state") not in FINAL
        }
        if nonfinal_locals:
            local_not_final.append({"id": tid, "locals": nonfinal_locals})
        local_states = {canon(v) for v in final_local.values() if v.get("state") in FINAL}
        if len(states) > 1 or bad_reads or len(states | local_states) > 1:
            inconsistent.append(
                {
                    "id": tid,
                    "reads": {
                        k: (canon(v)[:2] if isinstance(v, dict) else v) for k, v in rows.items()
                    },
                    "locals": {k: canon(v)[:2] for k, v in final_local.items()},
                }
            )
        state = good[0].get("state")
        if state == "succeeded":
            succeeded.append(tid)
        elif state in FINAL:
            failed.append({"id": tid, "state": state, "error": str(good[0].get("error"))[:200]})

    # idempotency: every id any node holds or any answer named, per key
    ids_of_key: dict[str, set[str]] = {}
    holders: dict[str, set[str]] = {}
    for (node, tid), row in run.census.items():
        key = row.get("idempotency_key")
        if isinstance(key, str):
            ids_of_key.setdefault(key, set()).add(tid)
            holders.setdefault(tid, set()).add(node)
    for s in subs:
        ids_of_key.setdefault(s.key, set()).update(s.ids)
    duplicated = {k: sorted(v) for k, v in ids_of_key.items() if len(v) > 1}
    dup_detail = [
        {
            "key": k,
            "ids": v,
            "held_by": {t: sorted(holders.get(t, ())) for t in v},
            "client_answers": run.submissions[k].answers if k in run.submissions else None,
            "repeat": run.submissions[k].repeat_answer if k in run.submissions else None,
        }
        for k, v in sorted(duplicated.items())
    ]
    repeats = [s for s in accepted if s.repeat_id is not None]
    repeat_mismatch = [s.key for s in repeats if s.repeat_id != s.accepted_id]

    # answered 202 although only one node held it (the accept log says held_by_a_peer
    # false); with --data-dir that is by design (the journal holds it), not a problem
    answered_202 = {str(s.accepted_id) for s in accepted if s.accepted_status == 202}
    single_holder_202 = sorted(answered_202 & facts.unheld_accepts)

    # streams
    for st in run.streams:
        if st.outcome == "cut":
            entry = next(h for h in run.hosts if h.name == st.entry)
            killed = [k for k in run.kills if k.node == entry.name]
            if any(st.started - 1 <= k.at <= st.ended + 1 for k in killed):
                st.outcome = "cut_entry_killed"
    stream_counts: dict[str, int] = {}
    for st in run.streams:
        stream_counts[st.outcome] = stream_counts.get(st.outcome, 0) + 1

    # exit codes: our SIGKILLs give -9, the final SIGTERM 0; anything else is a crash
    crashes = []
    for h in run.hosts:
        for n, life in enumerate(h.lives):
            code = life.code
            expected = -signal.SIGKILL if life.killed is not None else 0
            if code != expected:
                crashes.append({"node": h.name, "life": n, "exit_code": code})

    detect = [k.detected_s for k in run.kills if k.detected_s is not None]
    takeover = [k.taken_over_s for k in run.kills if k.taken_over_s is not None]
    attempts = sum(len(s.answers) for s in subs)
    return {
        "config": asdict(cfg),
        "loss_method": run.loss_method,
        "loss_drops_per_namespace": loss_drops,
        "converged_after_chaos_s": conv,
        "keys_submitted": len(subs),
        "accepted": len(ids),
        "accepted_202": sum(1 for s in accepted if s.accepted_status == 202),
        "accepted_200": sum(1 for s in accepted if s.accepted_status == 200),
        "gave_up": sum(1 for s in subs if s.gave_up),
        "rejected_4xx": sum(1 for s in subs if s.accepted_id is None and not s.gave_up),
        "submission_attempts": attempts,
        "retried_keys": sum(1 for s in subs if len(s.answers) > 1),
        "cut_submissions": sum(1 for s in subs for a in s.answers if ":cut" in a),
        "refused_503": sum(1 for s in subs for a in s.answers if a.endswith(":503")),
        "succeeded": len(succeeded),
        "failed": failed,
        "lost": lost,
        "not_final_after_drain": not_final,
        "drain_s": round(drain_s, 1),
        "inconsistent": inconsistent,
        "local_not_final": local_not_final,
        "duplicated": dup_detail,
        "repeats": len(repeats),
        "repeat_mismatch": repeat_mismatch,
        "single_holder_202": single_holder_202,
        "accepted_unheld_logged": len(facts.unheld_accepts),
        "refused_unreplicated_logged": facts.refused_unreplicated,
        "census_errors": run.census_errors,
        "client_loop_max_stall_s": round(run.loop_max_stall_s, 2),
        "census_capped": run.census_capped,
        "streams": stream_counts,
        "streams_bad": [asdict(s) for s in run.streams if s.outcome == "cut"][:20],
        "stream_errors": [s.detail for s in run.streams if s.outcome == "error_object"][:20],
        "kills": [asdict(k) for k in run.kills],
        "detect_s": {"p50": percentile(detect, 0.5), "max": max(detect, default=None)},
        "takeover_s": {"p50": percentile(takeover, 0.5), "max": max(takeover, default=None)},
        "crashes": crashes,
        "bad_log_lines": len(facts.bad_lines),
        "bad_log_examples": facts.bad_lines[:8],
        "client_disconnect_logs": facts.disconnect_logs,
    }


def problems(result: dict[str, Any]) -> list[str]:
    """What breaks the issue's promises, one sentence each (empty: all kept)."""
    out = []
    if result["converged_after_chaos_s"] is None:
        out.append("the mesh did not converge within 60 s after the chaos")
    for name in ("lost", "inconsistent", "local_not_final", "duplicated", "crashes"):
        if result[name]:
            out.append(f"{len(result[name])} {name}: {json.dumps(result[name][:3])[:1500]}")
    if result["repeat_mismatch"]:
        out.append(f"repeat with the same key gave another id: {result['repeat_mismatch'][:5]}")
    if result["single_holder_202"] and not result["config"]["data_dir"]:  # else: journalled
        out.append(f"{len(result['single_holder_202'])} tasks answered 202 with a single holder")
    if result["streams"].get("cut"):
        out.append(
            f"{result['streams']['cut']} streams cut silently: "
            f"{json.dumps(result['streams_bad'][:3])[:800]}"
        )
    if result["bad_log_lines"]:
        out.append(
            f"{result['bad_log_lines']} tracebacks/unhandled errors in node logs: "
            + " || ".join(result["bad_log_examples"][:3])[:2000]
        )
    if result["accepted"] == 0:
        out.append("no task was accepted at all")
    return out


def run_chaos(cfg: ChaosConfig) -> dict[str, Any]:
    """The whole run: mesh up, chaos, verdict; everything removed on exit."""
    with chaos_mesh(cfg) as run:
        chaos_phase(run)
        return verdict(run)
