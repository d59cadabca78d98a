"""Find (or cancel) a task this node does not own by asking the live peers at once.

Why a fan-out: a task lives on its owner and its replicas; a client may ask any node.
The question goes to every alive peer at once with `?local=1` (so it is never asked
further), the first useful answer wins, and a short timeout bounds the wait. With a
cluster key the request is signed like every node-to-node request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import httpx
import trio

from meshlb.mesh.auth import AUTH_HEADER, sign

LOOKUP_TIMEOUT_S = 2.0


def with_query(path: str, params: dict[str, str]) -> str:
    """`path?query`, encoded once here: the signature covers exactly what is sent."""
    return f"{path}?{urlencode(sorted(params.items()))}"


def signed_headers(cluster_key: str | None, method: str, target: str) -> dict[str, str]:
    if cluster_key is None:
        return {}
    return {AUTH_HEADER: sign(cluster_key, method, target, b"", time.time())}


async def ask_peers(
    client: httpx.AsyncClient,
    peer_urls: Sequence[str],
    method: str,
    path: str,
    wait_s: float,
    cluster_key: str | None,
    wanted: frozenset[int] = frozenset({200}),
) -> tuple[int, dict[str, Any]] | None:
    """(status, JSON) of the first peer answering a `wanted` status, or None."""
    found: tuple[int, dict[str, Any]] | None = None

    params: dict[str, str] = {"local": "1"}
    if wait_s:
        params["wait"] = str(wait_s)
    target = with_query(path, params)

    async def ask(url: str, cancel: trio.CancelScope) -> None:
        nonlocal found
        try:
            r = await client.request(
                method,
                f"{url}{target}",
                headers=signed_headers(cluster_key, method, target),
                timeout=wait_s + LOOKUP_TIMEOUT_S,
            )
            body = r.json()
        except (httpx.HTTPError, ValueError):
            return
        if r.status_code in wanted and found is None and isinstance(body, dict):
            found = (r.status_code, body)
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        for url in peer_urls:
            nursery.start_soon(ask, url, nursery.cancel_scope)
    return found


async def find_on_peers(
    client: httpx.AsyncClient,
    peer_urls: Sequence[str],
    task_id: str,
    wait_s: float,
    cluster_key: str | None,
) -> dict[str, Any] | None:
    """The task's JSON from whichever peer holds it, or None."""
    found = await ask_peers(client, peer_urls, "GET", f"/v1/tasks/{task_id}", wait_s, cluster_key)
    return None if found is None else found[1]


async def gather_from_peers(
    client: httpx.AsyncClient,
    peer_urls: Sequence[str],
    path: str,
    params: dict[str, str] | None = None,
    cluster_key: str | None = None,
) -> list[dict[str, Any]]:
    """Every peer's JSON answer to `GET path?local=1` (those that answer 200 in time)."""
    answers: list[dict[str, Any]] = []
    target = with_query(path, {**(params or {}), "local": "1"})

    async def ask(url: str) -> None:
        try:
            r = await client.get(
                f"{url}{target}",
                headers=signed_headers(cluster_key, "GET", target),
                timeout=LOOKUP_TIMEOUT_S,
            )
            body = r.json()
        except (httpx.HTTPError, ValueError):
            return
        if r.status_code == 200 and isinstance(body, dict):
            answers.append(body)

    async with trio.open_nursery() as nursery:
        for url in peer_urls:
            nursery.start_soon(ask, url)
    return answers
