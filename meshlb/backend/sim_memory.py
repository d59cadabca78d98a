"""Pure core of the simulator's memory model: Ollama's scheduler (`server/sched.go`).

Why a core of its own: which model is loaded, what a request waits for, and what a load
evicts are the facts the mesh's placement must learn to price, so they must be exact and
testable without sockets or a clock. Callers pass `now` in (trio time in the app, plain
floats in tests) and ask `next_deadline()` when they next need to call `advance(now)`.

Rules carried over from sched.go (and the runner's cache.go):
- Requests are scheduled one at a time in arrival order. A request for a model that is
  still loading, or one that waits for an eviction, holds up every request behind it
  (Ollama's pending loop blocks the same way).
- A loaded model whose runner options (here `num_ctx`) differ from the request's is
  reloaded (`needsReload`), once its running requests are done.
- With `max_loaded` models loaded, or when the new model does not fit in the free VRAM,
  a runner is chosen to go (`findRunnerToUnload`): runners sorted by keep_alive, shortest
  first (forever last); the first IDLE one goes at once; if none is idle the shortest
  one is marked to go when its last request ends, and the new request waits. Equal
  keep_alives (the usual case) are broken by least recent use (sched.go leaves the order
  to map iteration or the name; SPEC asks for LRU). A runner with requests is never
  interrupted.
- The first model always loads, even if larger than the VRAM (partial offload:
  `size_vram` is then the VRAM). While any model loads, no second load starts (the
  GPU's free memory is not yet known); that request goes to the back of the queue.
- A load takes `load_fixed_s + size / load_bytes_per_s`. The request that started it
  going away aborts the load (WaitUntilRunning uses its context).
- Each runner has `parallel` slots; requests beyond them wait in FIFO order. A slot is
  chosen as Ollama's single-user cache does (`findLongestCacheSlot`): the free slot
  whose last processed text shares the longest prefix with the new prompt.
- keep_alive: the request's value (if given) becomes the runner's; when its last
  request ends the runner stays idle for that long (0 = unload now, forever when
  negative, here `FOREVER_S`). `expire()` is `keep_alive: 0` with an empty prompt.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

FOREVER_S = 9_223_372_036.854775  # Go's time.Duration(math.MaxInt64), what keep_alive < 0 means


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """The host: VRAM, how many models at once, load speed, default keep_alive, slots.

    0 means unlimited for `vram_bytes` and `max_loaded`, and instant for
    `load_bytes_per_s`.
    """

    vram_bytes: int = 0
    max_loaded: int = 3
    load_bytes_per_s: float = 0.0
    load_fixed_s: float = 0.0
    keep_alive_s: float = 300.0
    parallel: int = 4


@dataclass(frozen=True, slots=True)
class Ask:
    """One request for a model. `prompt` None: a load only (it needs no slot)."""

    req_id: int
    model: str
    size: int
    keep_alive_s: float | None = None
    num_ctx: int = 4096
    prompt: str | None = ""
    use_cache: bool = True


@dataclass(frozen=True, slots=True)
class Grant:
    """What a request got: when the runner was ready for it, when it got a slot, which
    slot, and how many leading characters of its prompt that slot already held."""

    runner_at: float
    started_at: float
    slot: int
    cached_chars: int


@dataclass(frozen=True, slots=True)
class Loaded:
    """One runner as `/api/ps` shows it."""

    model: str
    size: int
    size_vram: int
    expires_at: float
    num_ctx: int
    loading: bool


@dataclass(eq=False)
class _Runner:
    model: str
    size: int
    size_vram: int
    num_ctx: int
    session_s: float
    ready_at: float
    slots: list[str]
    busy: list[bool]
    loader: int  # the request whose context the load runs under
    refcount: int = 1
    loading: bool = True
    evicted: bool = False  # marked to go to make room for another model
    idle_since: float | None = None  # set while refcount == 0
    expires_at: float | None = None  # last idle expiry (sched.go keeps it stale while busy)
    last_used: float = 0.0
    waiting: deque[Ask] = field(default_factory=deque)
    runner_at: dict[int, float] = field(default_factory=dict)

    def idle_expiry(self) -> float:
        return math.inf if self.idle_since is None else self.idle_since + self.session_s


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection over C-speed slice compares."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class ModelMemory:
    """Loaded runners, the scheduler's queue, and the grants given; see the module doc."""

    def __init__(self, config: MemoryConfig) -> None:
        self.config = config
        self._runners: dict[str, _Runner] = {}
        self._pending: deque[Ask] = deque()
        self._grants: dict[int, tuple[Grant, str]] = {}  # req_id -> (grant, model)
        self.loads = 0  # loads started, for /sim/stats and tests
        self.evictions = 0  # runners unloaded to make room
        self.generation = 0  # bumped on every change, so a driver knows to wake waiters

    # ---- stimuli ----

    def submit(self, ask: Ask, now: float) -> None:
        self.advance(now)
        self._pending.append(ask)
        self._schedule(now)
        self.generation += 1

    def finish(self, req_id: int, now: float, processed: str | None = None) -> None:
        """A granted request ended; `processed` is what its slot now holds (prompt+reply)."""
        self.advance(now)
        grant, model = self._grants.pop(req_id)
        r = self._runners[model]
        if grant.slot >= 0:
            r.busy[grant.slot] = False
            if processed is not None:
                r.slots[grant.slot] = processed
        self._release(r, now)
        self.generation += 1

    def cancel(self, req_id: int, now: float) -> None:
        """The client went away, wherever its request was (queued, waiting, running)."""
        self.advance(now)
        if req_id in self._grants:
            self.finish(req_id, now)
            return
        for ask in self._pending:
            if ask.req_id == req_id:
                self._pending.remove(ask)
                self._schedule(now)
                self.generation += 1
                return
        for r in list(self._runners.values()):
            if r.loading and r.loader == req_id:  # the load dies with its request
                self._unload(r, now)
                self._schedule(now)
                self.generation += 1
                return
            for ask in r.waiting:
                if ask.req_id == req_id:
                    r.waiting.remove(ask)
                    r.runner_at.pop(req_id, None)
                    self._release(r, now)
                    self.generation += 1
                    return

    def expire(self, model: str, now: float) -> None:
        """Unload `model` now, or when its running requests end (sched.go expireRunner)."""
        self.advance(now)
        r = self._runners.get(model)
        if r is None:
            return
        r.session_s = 0.0
        r.expires_at = now
        if r.refcount <= 0:
            self._unload(r, now)
            self._schedule(now)
        self.generation += 1

    def advance(self, now: float) -> None:
        """Fire every timer due by `now` (load done, keep_alive over) at its own time."""
        while (t := self.next_deadline()) <= now:
            for r in list(self._runners.values()):
                if r.loading and r.ready_at <= t:
                    r.loading = False
                    self._serve_waiting(r, r.ready_at)
                elif not r.loading and r.refcount <= 0 and r.idle_expiry() <= t:
                    self._unload(r, t)
            self._schedule(t)
            self.generation += 1

    # ---- queries ----

    def next_deadline(self) -> float:
        times = [r.ready_at if r.loading else r.idle_expiry() for r in self._runners.values()]
        return min(times, default=math.inf)

    def grant(self, req_id: int) -> Grant | None:
        got = self._grants.get(req_id)
        return got[0] if got else None

    def loaded(self, now: float) -> list[Loaded]:
        """Runners, as /api/ps lists them: longest time left first."""
        out = []
        for r in self._runners.values():
            if r.idle_since is not None:
                expires = r.idle_expiry()
            elif r.expires_at is not None:  # busy again: sched.go leaves the last expiry
                expires = r.expires_at
            else:  # never idle yet: Ollama's ps shows now + keep_alive
                expires = now + r.session_s
            out.append(Loaded(r.model, r.size, r.size_vram, expires, r.num_ctx, r.loading))
        out.sort(key=lambda x: -x.expires_at)
        return out

    def used_vram(self) -> int:
        return sum(r.size_vram for r in self._runners.values())

    def queued(self) -> int:
        return len(self._pending)

    # ---- the scheduler ----

    def _schedule(self, now: float) -> None:
        deferred: list[Ask] = []
        cfg = self.config
        while self._pending:
            ask = self._pending[0]
            r = self._runners.get(ask.model)
            victim: _Runner | None
            if r is not None:
                if r.loading:
                    break  # sched.go blocks on the loading runner's lock
                if r.num_ctx == ask.num_ctx:
                    self._pending.popleft()
                    self._attach(r, ask, now)
                    continue
                victim = r  # needsReload
            elif cfg.max_loaded and len(self._runners) >= cfg.max_loaded:
                victim = self._victim()
            elif not self._runners:
                self._load(self._pending.popleft(), now)
                continue
            elif any(x.loading for x in self._runners.values()):
                deferred.append(self._pending.popleft())  # requeued behind the others
                continue
            elif not cfg.vram_bytes or self.used_vram() + ask.size <= cfg.vram_bytes:
                self._load(self._pending.popleft(), now)
                continue
            else:
                victim = self._victim()
            assert victim is not None
            victim.session_s = 0.0
            if victim is not r and not victim.evicted:
                victim.evicted = True
                self.evictions += 1
            if victim.refcount > 0:
                break  # wait for its requests to end; everything behind waits too
            self._unload(victim, now)
        self._pending.extend(deferred)

    def _victim(self) -> _Runner | None:
        runners = sorted(self._runners.values(), key=lambda r: (r.session_s, r.last_used))
        idle = [r for r in runners if r.refcount <= 0]
        return (idle or runners)[0] if runners else None

    def _load(self, ask: Ask, now: float) -> None:
        cfg = self.config
        load_s = cfg.load_fixed_s
        if cfg.load_bytes_per_s > 0:
            load_s += ask.size / cfg.load_bytes_per_s
        vram = min(ask.size, cfg.vram_bytes) if cfg.vram_bytes else ask.size
        keep = cfg.keep_alive_s if ask.keep_alive_s is None else ask.keep_alive_s
        r = _Runner(
            model=ask.model,
            size=ask.size,
            size_vram=vram,
            num_ctx=ask.num_ctx,
            session_s=keep,
            ready_at=now + load_s,
            slots=[""] * cfg.parallel,
            busy=[False] * cfg.parallel,
            loader=ask.req_id,
            last_used=now,
        )
        r.waiting.append(ask)
        self._runners[ask.model] = r
        self.loads += 1
        if load_s <= 0:
            r.loading = False
            self._serve_waiting(r, now)

    def _attach(self, r: _Runner, ask: Ask, now: float) -> None:
        r.refcount += 1
        r.idle_since = None
        r.last_used = now
        if ask.keep_alive_s is not None:
            r.session_s = ask.keep_alive_s
        r.runner_at[ask.req_id] = now
        r.waiting.append(ask)
        self._serve_waiting(r, now)

    def _serve_waiting(self, r: _Runner, now: float) -> None:
        """Hand free slots to waiting requests, in order; loads only need the runner."""
        while r.waiting and not r.loading:
            ask = r.waiting[0]
            runner_at = r.runner_at.pop(ask.req_id, now)
            if ask.prompt is None:
                r.waiting.popleft()
                self._grants[ask.req_id] = (Grant(runner_at, now, -1, 0), r.model)
                continue
            free = [i for i, b in enumerate(r.busy) if not b]
            if not free:
                r.runner_at[ask.req_id] = runner_at
                return
            r.waiting.popleft()
            best, cached = free[0], -1
            for i in free:
                n = common_prefix_len(r.slots[i], ask.prompt) if ask.use_cache else 0
                if n > cached:
                    best, cached = i, n
            r.busy[best] = True
            self._grants[ask.req_id] = (Grant(runner_at, now, best, cached), r.model)

    def _release(self, r: _Runner, now: float) -> None:
        r.refcount -= 1
        if r.refcount <= 0:
            if r.session_s <= 0:
                self._unload(r, now)
            else:
                r.idle_since = now
                r.expires_at = now + r.session_s
        else:
            self._serve_waiting(r, now)
        self._schedule(now)

    def _unload(self, r: _Runner, now: float) -> None:
        del self._runners[r.model]
