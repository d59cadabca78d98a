"""The gossip core is pure, transitively: no I/O, clock, threads or OS randomness can
reach it through any import chain (randomness and nonces are injected like `now`)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOSSIP = ROOT / "meshlb" / "gossip"
DRIVERS = {"driver.py", "__main__.py"}
FORBIDDEN = {"trio", "socket", "time", "asyncio", "os", "threading", "secrets", "httpx",
             "structlog", "selectors", "subprocess"}  # fmt: skip


def _imports(path: pathlib.Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _module_path(name: str) -> pathlib.Path | None:
    if not name.startswith("meshlb."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def test_core_modules_reach_no_io_clock_or_os_randomness_transitively() -> None:
    core = sorted(p for p in GOSSIP.glob("*.py") if p.name not in DRIVERS)
    assert len(core) >= 15
    for start in core:
        seen: set[pathlib.Path] = set()
        todo = [start]
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            assert path.name not in DRIVERS or path.parent != GOSSIP, (start, path)
            for name in _imports(path):
                why = f"{start.name} reaches {name} via {path.name}"
                assert name.split(".")[0] not in FORBIDDEN, why
                assert "urandom" not in name, (start, path, name)
                dep = _module_path(name)
                if dep is not None:
                    todo.append(dep)


def test_no_type_ignores_or_stubs_in_the_gossip_core() -> None:
    for path in GOSSIP.glob("*.py"):
        text = path.read_text()
        assert "type: ignore" not in text, path
        assert "NotImplementedError" not in text, path
        assert len(text.splitlines()) < 400, path
