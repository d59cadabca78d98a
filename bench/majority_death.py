"""Three of five nodes die within 20 s: how long until every task is final?
(issue 15, defect 8; real processes on loopback)

With the default quorum rule the two survivors hold the dead members' tasks until
gossip reaps the dead (about 5 minutes): a majority of the known members is gone.
With `--dead-quorum-after-s S` a member declared dead for S seconds leaves the count,
so the survivors take over after about detection + S. Runs both, side by side, and
prints a table (tasks lost, duplicated results, time from the first kill until all are
final); writes bench/results/majority_death.json. `--quick` runs only the fast
variant (the default one waits for the reap, over five minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.procs import alive_ids, meshlb_node, sim_ollama, wait_until

IDS = ("m0", "m1", "m2", "m3", "m4")
TASKS = 40
FINAL = ("succeeded", "failed", "cancelled")
KILL_EVERY_S = 10.0  # time to detect a death and re-replicate before the next one


def scenario(extra: tuple[str, ...], budget_s: float) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(sim_ollama(tokens_per_second=10, parallel=2)) for _ in IDS]
        first = stack.enter_context(
            meshlb_node(sims[0].url, "--max-concurrency", "2", *extra, node_id=IDS[0])
        )
        seed = ("--join", f"127.0.0.1:{first.extra['gossip_port']}")
        nodes = [first] + [
            stack.enter_context(
                meshlb_node(s.url, "--max-concurrency", "2", *seed, *extra, node_id=i)
            )
            for s, i in zip(sims[1:], IDS[1:], strict=True)
        ]
        for node in nodes:
            wait_until(lambda n=node: alive_ids(n) == set(IDS), 30, "all alive")
        client = httpx.Client(timeout=30)
        ids = []
        for i in range(TASKS):
            body = {
                "kind": "generate",
                "model": "llama3.2:1b",
                "request": {"prompt": f"majority {i}", "options": {"num_predict": 40}},
            }
            r = client.post(f"{nodes[i % 5].url}/v1/tasks", json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        time.sleep(2)
        killed_at = time.monotonic()  # the first kill
        for victim in nodes[2:]:  # three of five within 20 s, as in the run
            victim.kill(signal.SIGKILL)
            time.sleep(KILL_EVERY_S)
        survivors = nodes[:2]
        states: dict[str, str] = {}
        while time.monotonic() - killed_at < budget_s:
            states = {}
            for t in ids:
                r = client.get(f"{survivors[0].url}/v1/tasks/{t}")
                states[t] = r.json().get("state", "?") if r.status_code == 200 else "unknown"
            if all(s in FINAL for s in states.values()):
                break
            time.sleep(2)
        took = time.monotonic() - killed_at
        done = sum(s in FINAL for s in states.values())
        dropped = sum(
            client.get(f"{n.url}/v1/queue").json()["mesh"].get("duplicates_dropped", 0)
            for n in survivors
        )
        return {
            "tasks": TASKS,
            "final": done,
            "not_final": TASKS - done,
            "succeeded": sum(s == "succeeded" for s in states.values()),
            "all_final_after_s": round(took, 1) if done == TASKS else None,
            "duplicates_dropped": dropped,
            "states": {st: sum(v == st for v in states.values()) for st in set(states.values())},
            "budget_s": budget_s,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="only the fast variant")
    ap.add_argument("--after-s", type=float, default=20.0, help="--dead-quorum-after-s")
    ap.add_argument("--out", default="bench/results/majority_death.json")
    args = ap.parse_args()
    variants = {
        f"--dead-quorum-after-s {args.after_s:g}": (
            ("--dead-quorum-after-s", str(args.after_s)),
            120.0,
        )
    }
    if not args.quick:
        variants = {"default (wait for the reap)": ((), 420.0), **variants}
    out = {name: scenario(extra, budget) for name, (extra, budget) in variants.items()}
    table = Table(title=f"{TASKS} tasks on 5 nodes; 3 SIGKILLed 10 s apart")
    for col in ("quorum rule", "final", "succeeded", "all final after", "duplicates dropped"):
        table.add_column(col)
    for name, row in out.items():
        after = row["all_final_after_s"]
        table.add_row(
            name,
            f"{row['final']}/{row['tasks']}",
            str(row["succeeded"]),
            f"{after:.1f} s" if after is not None else f"not within {row['budget_s']:.0f} s",
            str(row["duplicates_dropped"]),
        )
    Console().print(table)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
