"""Load generators and process probes for bench/proxy_overhead.py.

Closed loops run under wrk when it is installed (C, so the load generator costs far
less than the node it measures) and under an aiohttp loop otherwise; bursts of
streams use aiohttp (asyncio), which, unlike httpx, does not add queueing of its own
when many requests start at once. CPU and memory come from /proc/<pid>.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import aiohttp

CLK_TCK = os.sysconf("SC_CLK_TCK")
WRK = shutil.which("wrk")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class LoopResult:
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_req: float = float("nan")
    tool: str = ""


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT_MS[m.group(2)] if m else float("nan")


def parse_wrk(out: str) -> tuple[int, int, float, float, float]:
    """(requests, errors, req/s, p50 ms, p99 ms) from `wrk --latency` output."""
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return requests, errors, rps, _wrk_ms(lat.get("50", "")), _wrk_ms(lat.get("99", ""))


def wrk_loop(
    url: str, body: dict[str, object], conc: int, duration_s: float, cpu_set: str | None
) -> LoopResult:
    """A closed loop of `conc` connections posting `body` to `url` for `duration_s`."""
    assert WRK is not None
    script = (
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    seconds = f"-d{max(1, round(duration_s))}s"
    argv = [WRK, "-t1", f"-c{conc}", seconds, "-s", f.name, "--latency", url]
    if cpu_set:
        argv = ["taskset", "-c", cpu_set, *argv]
    try:
        done = subprocess.run(argv, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
    return LoopResult(*parse_wrk(done.stdout), tool="wrk")


async def _aiohttp_loop(
    url: str, body: dict[str, object], conc: int, duration_s: float
) -> LoopResult:
    latencies: list[float] = []
    errors = 0
    data = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                async with session.post(url, data=data, headers=headers) as r:
                    await r.read()
                    errors += r.status != 200
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        elapsed = time.perf_counter() - started
    return LoopResult(
        len(latencies),
        errors,
        len(latencies) / elapsed,
        pct(latencies, 0.5) * 1e3,
        pct(latencies, 0.99) * 1e3,
        tool="aiohttp",
    )


def closed_loop(
    url: str,
    body: dict[str, object],
    conc: int,
    duration_s: float,
    pid: int | None,
    cpu_set: str | None,
) -> LoopResult:
    """wrk if installed, else aiohttp; with the CPU the process `pid` spent per request."""
    cpu0 = cpu_s(pid) if pid else 0.0
    if WRK:
        result = wrk_loop(url, body, conc, duration_s, cpu_set)
    else:
        result = asyncio.run(_aiohttp_loop(url, body, conc, duration_s))
    if pid and result.requests:
        result.cpu_ms_per_req = (cpu_s(pid) - cpu0) / result.requests * 1e3
    return result


@dataclass
class BurstResult:
    streams: int
    errors: int
    first_p50_ms: float
    first_p99_ms: float
    total_p50_ms: float
    chunks: int
    cpu_us_per_chunk: float = float("nan")
    peak_rss_mib: float = float("nan")
    first_chunks_ms: list[float] = field(default_factory=list, repr=False)


async def _burst(url: str, body: dict[str, object], count: int, pid: int | None) -> BurstResult:
    firsts: list[float] = []
    totals: list[float] = []
    chunks = errors = 0
    data = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    peak = [0.0]
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            nonlocal chunks, errors
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=data, headers=headers) as r:
                    errors += r.status != 200
                    first = True
                    async for piece in r.content.iter_any():
                        if first:
                            firsts.append(time.perf_counter() - t0)
                            first = False
                        chunks += piece.count(b"\n")
            except aiohttp.ClientError:
                errors += 1
                return
            totals.append(time.perf_counter() - t0)

        async def sample_rss() -> None:
            while pid:
                peak[0] = max(peak[0], rss_mib(pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(one() for _ in range(count)))
        sampler.cancel()
    return BurstResult(
        count,
        errors,
        pct(firsts, 0.5) * 1e3,
        pct(firsts, 0.99) * 1e3,
        pct(totals, 0.5) * 1e3,
        chunks,
        peak_rss_mib=peak[0] if pid else float("nan"),
        first_chunks_ms=[x * 1e3 for x in firsts],
    )


def burst(url: str, body: dict[str, object], count: int, pid: int | None) -> BurstResult:
    """`count` streams started at once; first-chunk times, chunk lines, node CPU per line."""
    cpu0 = cpu_s(pid) if pid else 0.0
    result = asyncio.run(_burst(url, body, count, pid))
    if pid and result.chunks:
        result.cpu_us_per_chunk = (cpu_s(pid) - cpu0) / result.chunks * 1e6
    return result
