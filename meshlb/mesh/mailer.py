"""Outbound node-to-node messages of the ownership protocol, batched per peer over HTTP.

Why this shape: the ownership core emits many small messages (copies, acks, offers);
one HTTP POST per message would cost a connection turn each. Each peer gets one
sender task that posts everything queued for it as one msgpack batch, in order, one
batch at a time. A batch that fails (peer down, timeout) is dropped: the core re-sends
whatever matters until it is acked, so the mailer needs no retry logic of its own.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import httpx
import structlog
import trio

from meshlb.mesh.auth import AUTH_HEADER, sign
from meshlb.mesh.ownership_wire import NetworkCommand, destination, encode_batch

log = structlog.get_logger()

OWNERSHIP_PATH = "/v1/internal/ownership"
SEND_TIMEOUT_S = 5.0
# After a failed send, wait before the next batch to that peer (it may be dying).
FAILURE_PAUSE_S = 0.2
MAX_BATCH_ITEMS = 500


class PeerMailer:
    """Queues commands per destination node and posts them in batches."""

    def __init__(
        self,
        node_id: str,
        boot: str,
        client: httpx.AsyncClient,
        address_of: Callable[[str], str | None],
        cluster_key: str | None,
    ) -> None:
        self.node_id = node_id
        self.boot = boot
        self.client = client
        self.address_of = address_of
        self.cluster_key = cluster_key
        self.counters: Counter[str] = Counter()
        self._boxes: dict[str, list[NetworkCommand]] = {}
        self._ready: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def send(self, cmd: NetworkCommand) -> None:
        """Queue one command for its destination; never blocks."""
        to = destination(cmd)
        box = self._boxes.get(to)
        if box is None:
            if self._nursery is None:
                self.counters["dropped_not_started"] += 1
                return
            box = self._boxes[to] = []
            self._ready[to] = trio.Event()
            self._nursery.start_soon(self._deliver, to)
        box.append(cmd)
        self._ready[to].set()

    async def _deliver(self, to: str) -> None:
        while True:
            await self._ready[to].wait()
            self._ready[to] = trio.Event()
            box = self._boxes[to]
            batch, self._boxes[to] = box[:MAX_BATCH_ITEMS], box[MAX_BATCH_ITEMS:]
            if self._boxes[to]:
                self._ready[to].set()
            if not await self._post(to, batch):
                await trio.sleep(FAILURE_PAUSE_S)

    def _encode(self, to: str, batch: list[NetworkCommand]) -> bytes:
        """The batch's bytes; an item msgpack cannot carry (e.g. an integer beyond 64
        bits in an Ollama result) is dropped and logged, so it never blocks the rest."""
        try:
            return encode_batch(self.node_id, self.boot, batch)
        except (TypeError, ValueError, OverflowError):
            good = []
            for cmd in batch:
                try:
                    encode_batch(self.node_id, self.boot, [cmd])
                except (TypeError, ValueError, OverflowError) as e:
                    self.counters["unencodable"] += 1
                    log.error(
                        "ownership message cannot be encoded, dropped", peer=to, error=repr(e)
                    )
                    continue
                good.append(cmd)
            return encode_batch(self.node_id, self.boot, good)

    async def _post(self, to: str, batch: list[NetworkCommand]) -> bool:
        addr = self.address_of(to)
        if addr is None:
            self.counters["dropped_no_address"] += len(batch)
            return False
        body = self._encode(to, batch)
        headers = {"content-type": "application/msgpack"}
        if self.cluster_key is not None:
            headers[AUTH_HEADER] = sign(
                self.cluster_key, "POST", OWNERSHIP_PATH, body, time.time(), headers
            )
        try:
            r = await self.client.post(
                f"http://{addr}{OWNERSHIP_PATH}",
                content=body,
                headers=headers,
                timeout=SEND_TIMEOUT_S,
            )
        except httpx.HTTPError as e:
            self.counters["send_errors"] += 1
            log.debug("ownership batch not delivered", peer=to, error=repr(e), items=len(batch))
            return False
        if r.status_code != 204:
            self.counters["send_refused"] += 1
            log.warning(
                "peer refused an ownership batch", peer=to, status=r.status_code, body=r.text[:200]
            )
            return False
        self.counters["batches_sent"] += 1
        self.counters["messages_sent"] += len(batch)
        return True
