"""Real UDP on loopback: start K `python -m meshlb.gossip` processes, time convergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from tests.procs import free_gossip_port


def alive_count(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(m["state"] == "alive" for m in json.load(f)["members"])
    except (OSError, ValueError, KeyError):
        return 0


def converge_processes(k: int, timeout_s: float = 60.0) -> dict[str, float | int | bool]:
    """Seconds from spawning k members until every one sees k alive (and when started)."""
    tmp = tempfile.mkdtemp(prefix="gossip-bench-")
    ports = [free_gossip_port() for _ in range(k)]
    files = [os.path.join(tmp, f"n{i}.json") for i in range(k)]
    procs = []
    t0 = time.monotonic()
    for i in range(k):
        argv = [sys.executable, "-m", "meshlb.gossip", "--node-id", f"n{i}",
                "--bind", f"127.0.0.1:{ports[i]}", "--state-file", files[i]]  # fmt: skip
        if i:
            argv += ["--join", f"127.0.0.1:{ports[0]}", "--join", f"127.0.0.1:{ports[1]}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        started = None
        while time.monotonic() - t0 < timeout_s:
            counts = [alive_count(f) for f in files]
            if started is None and all(c > 0 for c in counts):
                started = time.monotonic() - t0
            if all(c == k for c in counts):
                return {"processes": k, "converged": True, "all_started_s": started or 0.0,
                        "converged_s": time.monotonic() - t0}  # fmt: skip
            time.sleep(0.05)
        return {"processes": k, "converged": False, "converged_s": float("inf")}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
