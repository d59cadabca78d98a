"""Outbound node-to-node messages of the ownership protocol, batched per peer.

Why this shape: the ownership core emits many small messages (copies, acks, offers);
one request per message would cost a connection turn each. Each peer gets one
sender task that posts everything queued for it as one msgpack batch, in order, one
batch at a time. A batch that fails (peer down, timeout) is dropped: the core re-sends
whatever matters until it is acked, so the mailer needs no retry logic of its own.

The batches travel over a `RequestTransport`: `HttpTransport` here (signed
node-to-node HTTP, answered by `meshlb.api.internal_routes`) in a node, the memory
network in the simulator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog
import trio

from meshlb.drivers.transport import RequestFailed, RequestTransport
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.auth import AUTH_HEADER, sign
from meshlb.mesh.ownership_wire import encode_batch

log = structlog.get_logger()

OWNERSHIP_PATH = "/v1/internal/ownership"
SEND_TIMEOUT_S = 5.0
# After a failed send, wait before the next batch to that peer (it may be dying).
FAILURE_PAUSE_S = 0.2
MAX_BATCH_ITEMS = 500


@dataclass(slots=True)
class MailerCounters:
    batches_sent: int = 0
    messages_sent: int = 0
    send_errors: int = 0
    send_refused: int = 0
    dropped_no_address: int = 0
    dropped_not_started: int = 0
    unencodable: int = 0

    def failed(self, reason: str, items: int) -> None:
        match reason:
            case "no_address":
                self.dropped_no_address += items
            case "refused":
                self.send_refused += 1
            case _:
                self.send_errors += 1


class HttpTransport:
    """`RequestTransport` over the signed node-to-node HTTP POST (cluster-key HMAC)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        address_of: Callable[[str], str | None],
        cluster_key: str | None,
        path: str = OWNERSHIP_PATH,
    ) -> None:
        self.client, self.address_of = client, address_of
        self.cluster_key, self.path = cluster_key, path

    async def request(self, peer: str, body: bytes) -> bytes:
        addr = self.address_of(peer)
        if addr is None:
            raise RequestFailed("no_address")
        headers = {"content-type": "application/msgpack"}
        if self.cluster_key is not None:
            headers[AUTH_HEADER] = sign(self.cluster_key, "POST", self.path, body, time.time(),
                                        headers)  # fmt: skip
        try:
            r = await self.client.post(f"http://{addr}{self.path}", content=body,
                                       headers=headers, timeout=SEND_TIMEOUT_S)  # fmt: skip
        except httpx.HTTPError as e:
            raise RequestFailed("send_error", repr(e)) from e
        if r.status_code != 204:  # the receiver answers 204 No Content
            raise RequestFailed("refused", f"{r.status_code}: {r.text[:200]}")
        return r.content


class PeerMailer:
    """Queues commands per destination node and posts them in batches."""

    def __init__(self, node_id: str, boot: str, transport: RequestTransport) -> None:
        self.node_id = node_id
        self.boot = boot
        self.transport = transport
        self.counters = MailerCounters()
        self._boxes: dict[str, list[m.Send]] = {}
        self._ready: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def send(self, cmd: m.Send) -> None:
        """Queue one message for its destination; never blocks."""
        to = cmd.to
        box = self._boxes.get(to)
        if box is None:
            if self._nursery is None:
                self.counters.dropped_not_started += 1
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

    def _encode(self, to: str, batch: list[m.Send]) -> bytes:
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
                    self.counters.unencodable += 1
                    log.error(
                        "ownership message cannot be encoded, dropped", peer=to, error=repr(e)
                    )
                    continue
                good.append(cmd)
            return encode_batch(self.node_id, self.boot, good)

    async def _post(self, to: str, batch: list[m.Send]) -> bool:
        try:
            await self.transport.request(to, self._encode(to, batch))
        except RequestFailed as e:
            self.counters.failed(e.reason, len(batch))
            if e.reason == "refused":
                log.warning("peer refused an ownership batch", peer=to, why=str(e))
            else:
                log.debug("ownership batch not delivered", peer=to, why=str(e), items=len(batch))
            return False
        self.counters.batches_sent += 1
        self.counters.messages_sent += len(batch)
        return True
