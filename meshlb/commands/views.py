"""Pure formatting for the CLI views (`peers`, `stats`, `top`): figures a person reads.

Every helper takes plain values (and `now` where time matters) and returns a string,
so the rules (units, rounding, abbreviations) are unit-tested without a node or a
terminal. None (a field a node did not send) always renders as a dash, never "None".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DASH = "-"
UNLIMITED = "∞"


def _finite(value: Any) -> float | None:
    """A real number from a JSON value, or None (bools, strings, NaN are not figures)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value)


def fmt_duration(seconds: Any) -> str:
    """A span of time with a unit: 850 ms, 1.2 s, 42 s, 3m 20s, 2h 05m, 3d 04h."""
    s = _finite(seconds)
    if s is None:
        return DASH
    s = max(0.0, s)
    if s < 1.0:
        ms = s * 1000.0
        if 0.0 < ms < 1.0:
            return "<1 ms"
        return f"{ms:.0f} ms"
    if s < 10.0:
        return f"{s:.1f} s"
    if s < 60.0:
        return f"{s:.0f} s"
    total = int(s)
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h {total % 3600 // 60:02d}m"
    return f"{total // 86400}d {total % 86400 // 3600:02d}h"


def fmt_age(seconds: Any) -> str:
    """How long ago, compact for narrow columns: 0s, 42s, 3m, 2h, 5d."""
    s = _finite(seconds)
    if s is None:
        return DASH
    s = max(0.0, s)
    if s < 60:
        return f"{int(s)}s"
    if s < 3600:
        return f"{int(s // 60)}m"
    if s < 86400:
        return f"{int(s // 3600)}h"
    return f"{int(s // 86400)}d"


def fmt_ago(ts: Any, now: float) -> str:
    """A wall-clock timestamp as "42s ago" (a dash when the node did not say)."""
    t = _finite(ts)
    return DASH if t is None else f"{fmt_age(now - t)} ago"


def fmt_count(value: Any) -> str:
    """A count, short enough for a column: 7, 1234, 12.3k, 456k, 7.8M, 1.2G."""
    v = _finite(value)
    if v is None:
        return DASH
    if abs(v) < 10_000:
        return f"{v:.0f}" if v == int(v) else f"{v:.1f}"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            short = v / scale
            text = f"{short:.1f}" if abs(short) < 100 else f"{short:.0f}"
            return f"{text.removesuffix('.0')}{unit}"
    return f"{v:.0f}"  # pragma: no cover - unreachable: 10_000 >= 1e3


def fmt_rate(value: Any, unit: str = "") -> str:
    """A rate rounded to what a person reads: 0, 0.07, 3.4, 42, 1.2k; unit appended."""
    v = _finite(value)
    if v is None:
        return DASH
    if v == 0:
        text = "0"
    elif abs(v) < 1:
        text = f"{v:.2f}"
    elif abs(v) < 100:
        text = f"{v:.1f}".removesuffix(".0")
    else:
        text = fmt_count(round(v))
    return f"{text} {unit}" if unit else text


def fmt_used_of(used: Any, limit: Any) -> str:
    """Usage against a limit: "12/60", "12/∞" when there is no limit, "-" when unknown."""
    if _finite(used) is None:
        return DASH
    cap = _finite(limit)
    return f"{fmt_count(used)}/{UNLIMITED if cap is None else fmt_count(cap)}"


def fmt_bool_up(value: Any) -> str:
    """Ollama reachability: up, down, or ? when the member did not say."""
    if value is True:
        return "up"
    if value is False:
        return "down"
    return "?"


def short_model(name: str) -> str:
    """A model name without the implied ':latest' tag (what `ollama run` accepts too)."""
    return name.removesuffix(":latest")


def fit_list(items: Sequence[str], width: int, sep: str = ",") -> str:
    """Items joined by `sep` within `width` characters; what does not fit becomes "+N".

    Never cuts an item in half unless not even the first one fits, in which case it
    is cut in the middle (and the count of the rest follows when there is room).
    """
    if not items:
        return DASH
    if width <= 0:
        return ""
    whole = sep.join(items)
    if len(whole) <= width:
        return whole
    for k in range(len(items) - 1, 0, -1):
        text = f"{sep.join(items[:k])} +{len(items) - k}"
        if len(text) <= width:
            return text
    more = f" +{len(items) - 1}" if len(items) > 1 else ""
    if width - len(more) >= 4:
        return abbreviate(items[0], width - len(more)) + more
    return abbreviate(items[0], width)


def abbreviate(text: str, width: int) -> str:
    """Text cut in the middle to `width` characters ("gpu-no…ack-17"), whole if it fits.

    The middle goes because both ends of a host id or an address carry meaning
    (the rack at the start, the number at the end; the host and the port).
    """
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    keep = width - 1
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def split_addr(addr: str | None) -> tuple[str, str]:
    """("host", "port") from "host:port" or "[v6]:port"; ("", "") for nothing."""
    if not addr:
        return "", ""
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, ""
    return host, port


def fmt_addresses(http_addr: str | None, gossip_addr: str | None) -> str:
    """The HTTP address, and the gossip one as just ":port" when on the same host."""
    http_host, _ = split_addr(http_addr)
    gossip_host, gossip_port = split_addr(gossip_addr)
    if not gossip_addr:
        return http_addr or DASH
    if not http_addr:
        return f"gossip {gossip_addr}"
    if http_host == gossip_host:
        return f"{http_addr} g:{gossip_port}"
    return f"{http_addr} g:{gossip_addr}"


def member_models(member: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    """(models it has, models loaded in memory) of a member; tolerant of missing fields.

    The loaded set is read from whichever field a node sends (`loaded_models`,
    `models_loaded` or `loaded`), so a newer node's extra detail shows when present.
    """
    models = [short_model(m) for m in member.get("models") or [] if isinstance(m, str)]
    loaded_raw: Any = None
    for key in ("loaded_models", "models_loaded", "loaded"):
        if isinstance(member.get(key), list):
            loaded_raw = member[key]
            break
    loaded: set[str] = set()
    for item in loaded_raw or []:
        name = item.get("name") or item.get("model") if isinstance(item, dict) else item
        if isinstance(name, str):
            loaded.add(short_model(name))
    return models, loaded


def models_label(models: Sequence[str], loaded: Iterable[str]) -> list[str]:
    """Model names, loaded ones first and marked with '*'."""
    hot = set(loaded)
    ordered = [m for m in models if m in hot] + [m for m in models if m not in hot]
    extra = sorted(hot - set(models))
    return [f"{m}*" if m in hot else m for m in [*ordered, *extra]]


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested JSON objects as ("a.b.c", value) pairs; lists stay values."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(flatten(value, f"{name}."))
        else:
            out.append((name, value))
    return out


def fmt_value(value: Any) -> str:
    """Any JSON value for a table cell: counts short, floats rounded, lists joined."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return fmt_count(value)
    if isinstance(value, float):
        return fmt_rate(value)
    if isinstance(value, list):
        return ", ".join(fmt_value(v) for v in value) or DASH
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {fmt_value(v)}" for k, v in value.items()) or DASH
    return str(value)


def label(key: str) -> str:
    """A JSON key as a column or row label: 'stolen_by_here' -> 'stolen by here'."""
    return key.replace("_", " ")
