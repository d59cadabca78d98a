"""What a model load costs on a host, in seconds (pure: no I/O, no clock).

The most expensive thing that happens on an Ollama host is not a queued request but a
model load: seconds to a minute of a GPU doing nothing useful, and when memory is short
it evicts a model that the next request will need again. So placement prices a cold
host as: the load (size / the host's measured load rate) + what it evicts + the usual
wait and service. Evicting follows Ollama's rule (`server/sched.go`: the least recently
used idle runner goes first; a runner with requests is never interrupted, the new one
waits for it): an idle victim costs a fraction of reloading it later, a busy one costs
the time its work in hand needs to drain before the load can start (twice: the
scheduler holds every later request behind it), plus its reload.

Only what was measured is priced. A host whose loads were never timed (its Ollama has
loaded nothing yet, or every load took ~0 s, as a simulator without `--load-gbps`
does) prices a load as free: guessing a rate would send work away from a host that
loads instantly, and a host that has not loaded anything yet would never be measured.
`with_assumed_rate` lets an unmeasured host borrow the median measured rate, so in a
fleet where loads are slow no host looks cheap just because it is new.

Hysteresis: a cold host pays its load `LOAD_HYSTERESIS` times over, so a hot model
spreads to a second host only when its queue on the hosts that hold it would wait
clearly longer than a load, and two hosts never swap a model back and forth on noise.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

# Every timed load has a fixed part (starting the runner, allocating the KV cache).
LOAD_FIXED_S = 0.5
# A load rate at or above this (GB/s) is instant: nothing to price.
INSTANT_GBPS = 1000.0
# A model of unknown size (no host has it loaded, the local catalog does not list it).
DEFAULT_MODEL_GB = 4.0
# A cold host pays its load this many times over (see the module doc).
LOAD_HYSTERESIS = 1.5
# Evicting an idle model costs this fraction of reloading it: it may be asked for again.
IDLE_EVICT_FRACTION = 0.5
# Evicting busy work: Ollama's scheduler holds every later request (for any model) until
# the victim's requests drain, so the drain is paid this many times over.
BUSY_EVICT_FACTOR = 2.0
# Ollama loads at most this many models at once (OLLAMA_MAX_LOADED_MODELS: 3 per GPU by
# default; /api/ps does not say the setting, so a host is assumed to have one GPU).
MAX_LOADED = 3
# A model larger than the host's memory runs partly on the CPU (Ollama offloads the
# layers that do not fit): this many times slower.
OFFLOAD_SLOWDOWN = 5.0


@dataclass(frozen=True, slots=True)
class Resident:
    """One model loaded on a host; `active` = its requests there, queued or running;
    `served` = requests for it that host's node has started so far (a counter: how
    often its runner's prompt-cache slots turned over, for conversation affinity)."""

    model: str
    size_gb: float
    active: int = 0
    expires_at: float = math.inf  # wall clock; orders idle victims (soonest first)
    served: int = 0


@dataclass(frozen=True, slots=True)
class Residency:
    """A host's loaded models and memory. `memory_gb` None: no limit known (only the
    model count evicts); `load_gbps` None: no load timed yet (loads are not priced)."""

    loaded: tuple[Resident, ...] = ()
    memory_gb: float | None = None
    load_gbps: float | None = None

    def has(self, model: str) -> bool:
        return self.resident(model) is not None

    def resident(self, model: str) -> Resident | None:
        return next((r for r in self.loaded if r.model == model), None)

    def used_gb(self) -> float:
        return sum(r.size_gb for r in self.loaded)


def load_s(res: Residency, size_gb: float) -> float:
    """Seconds a load of `size_gb` takes on this host (0: not measured, or instant)."""
    rate = res.load_gbps
    if rate is None or rate <= 0 or rate >= INSTANT_GBPS:
        return 0.0
    return LOAD_FIXED_S + max(0.0, size_gb) / rate


def victims(res: Residency, size_gb: float) -> list[Resident]:
    """What loading `size_gb` evicts, in Ollama's order: idle ones first, least recently
    used (soonest expiry) first; busy ones (fewest requests first) only when idle ones
    do not free enough; also one when `MAX_LOADED` models are loaded."""
    free = math.inf if res.memory_gb is None else res.memory_gb - res.used_gb()
    order = sorted(res.loaded, key=lambda r: (r.active > 0, r.active, r.expires_at))
    out: list[Resident] = []
    for r in order:
        if free >= size_gb and len(res.loaded) - len(out) < MAX_LOADED:
            break
        out.append(r)
        free += r.size_gb
    return out


def eviction_s(
    res: Residency,
    size_gb: float,
    service_s: float,
    slots: int,
    sole: Collection[str] = frozenset(),
) -> float:
    """The cost of what a load of `size_gb` would evict here (see the module doc). A
    victim in `sole` is loaded on no other host: its next request anywhere pays a full
    load, so evicting it idle costs that load (with hysteresis), not a fraction."""
    cost = 0.0
    for v in victims(res, size_gb):
        reload_s = load_s(res, v.size_gb)
        if v.active > 0:  # everything queued behind the load waits for it to drain too
            drain_s = math.ceil(v.active / max(1, slots)) * service_s
            cost += BUSY_EVICT_FACTOR * drain_s + LOAD_HYSTERESIS * reload_s
        elif v.model in sole:
            cost += LOAD_HYSTERESIS * reload_s
        else:
            cost += IDLE_EVICT_FRACTION * reload_s
    return cost


def cold_start_s(
    res: Residency | None,
    model: str,
    size_gb: float,
    service_s: float,
    slots: int,
    sole: Collection[str] = frozenset(),
) -> float:
    """Extra seconds before `model` can run on this host: 0 when it is loaded or when the
    host's residency is unknown (it gossips none: priced as before), else the load with
    hysteresis plus what the load evicts; a model larger than the host's memory also
    pays for running partly on the CPU."""
    if res is None:
        return 0.0
    offload_s = 0.0
    if res.memory_gb is not None and size_gb > res.memory_gb:
        offload_s = (OFFLOAD_SLOWDOWN - 1) * service_s
    if res.has(model):
        return offload_s
    load = LOAD_HYSTERESIS * load_s(res, size_gb)
    return load + eviction_s(res, size_gb, service_s, slots, sole) + offload_s


def sole_copies(residencies: Sequence[Residency | None]) -> dict[int, frozenset[str]]:
    """Per host (by position): the models loaded there and on no other host."""
    holders: dict[str, int] = {}
    for res in residencies:
        for r in res.loaded if res is not None else ():
            holders[r.model] = holders.get(r.model, 0) + 1
    return {
        i: frozenset(r.model for r in res.loaded if holders[r.model] == 1)
        for i, res in enumerate(residencies)
        if res is not None
    }


def model_size_gb(
    residencies: Sequence[Residency | None], model: str, known_gb: float | None = None
) -> float:
    """The model's memory size: as some host has it loaded (what `/api/ps` says), else
    `known_gb` (the local catalog's size on disk), else `DEFAULT_MODEL_GB`."""
    for res in residencies:
        for r in res.loaded if res is not None else ():
            if r.model == model and r.size_gb > 0:
                return r.size_gb
    return known_gb if known_gb and known_gb > 0 else DEFAULT_MODEL_GB


def with_assumed_rate(residencies: Sequence[Residency | None]) -> list[Residency | None]:
    """Hosts that have timed no load yet borrow the median measured rate (see the module
    doc); with none measured anywhere, loads stay unpriced."""
    known = sorted(r.load_gbps for r in residencies if r is not None and r.load_gbps)
    if not known:
        return list(residencies)
    median = known[len(known) // 2]
    return [
        replace(r, load_gbps=median) if r is not None and not r.load_gbps else r
        for r in residencies
    ]
