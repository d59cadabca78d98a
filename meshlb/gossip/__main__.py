"""Run one gossip member from flags (for tests and experiments; `meshlb node` is the product).

    python -m meshlb.gossip --node-id a --bind 127.0.0.1:7946 --join 127.0.0.1:7947 \
        --state-file /tmp/a.json

With --state-file the member list is rewritten (atomically) a few times per second as
JSON, so a test in another process can watch this node's view.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal

import structlog
import trio

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.driver import GossipDriver
from meshlb.gossip.messages import Addr


def _addr(text: str) -> Addr:
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m meshlb.gossip")
    p.add_argument("--node-id", required=True)
    p.add_argument("--bind", type=_addr, required=True)
    p.add_argument("--advertise", type=_addr)
    p.add_argument("--join", type=_addr, action="append", default=[])
    p.add_argument("--cluster-key")
    p.add_argument("--meta", default="")
    p.add_argument("--probe-interval", type=float, default=1.0)
    p.add_argument("--state-file")
    return p.parse_args(argv)


def _write_state(path: str, driver: GossipDriver) -> None:
    rows = [
        {"id": m.node_id, "state": m.state, "incarnation": m.incarnation} for m in driver.members()
    ]
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"members": rows, "joined": driver.joined, "stats": driver.stats()}, f)
    os.replace(tmp, path)


async def _main(args: argparse.Namespace) -> None:
    base = GossipConfig()
    scale = args.probe_interval / base.probe_interval_s
    config = dataclasses.replace(
        base,
        probe_interval_s=args.probe_interval,
        probe_timeout_s=base.probe_timeout_s * scale,
        gossip_interval_s=base.gossip_interval_s * scale,
    )
    driver = GossipDriver(
        config, args.node_id, args.bind, args.advertise or args.bind, args.join,
        args.meta.encode(), args.cluster_key, structlog.get_logger().bind(node=args.node_id),
    )  # fmt: skip
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)

            async def watch_signals() -> None:
                async for _ in signals:
                    await driver.leave()
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            while args.state_file:
                _write_state(args.state_file, driver)
                await trio.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    trio.run(_main, _parse(argv))


if __name__ == "__main__":
    main()
