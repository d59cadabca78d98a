"""The pure cores stay pure, transitively: no I/O, clock, threads or OS randomness
can reach a core module through any chain of meshlb's own imports.

Why transitively: a core that imports a helper that imports `time` is as impure as
one that calls `time.time()` itself (that is how `mesh/view.py` came to read the
clock while every direct-import check passed). Randomness and nonces are injected
like `now`: a core may name `random.Random` (a type, or a seeded generator passed
in), but never call the `random` module's globals, `os.urandom` or `secrets`.
Third-party libraries (msgpack, pydantic, cryptography) are not walked: they are
pure functions of their input as the cores use them.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass, field

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "meshlb"
FORBIDDEN = {"trio", "httpx", "httpcore", "socket", "time", "threading", "asyncio", "os",
             "secrets", "selectors", "subprocess", "structlog"}  # fmt: skip

# The drivers and transports: Trio loops over sockets, allowed to do I/O.
NOT_CORE = {"gossip/driver.py", "gossip/__main__.py", "sched/driver.py"}
MESH_CORE = ("placement", "placement_service", "candidates", "meta", "availability", "arbiter",
             "dead_members", "peer_events", "replication", "stealing", "view", "residency",
             "residency_placement", "affinity")  # fmt: skip


def core_modules() -> list[pathlib.Path]:
    paths = [*PKG.glob("gossip/*.py"), *PKG.glob("sched/*.py"), PKG / "tokens.py"]
    paths.append(PKG / "model_names.py")
    paths += [PKG / "mesh" / f"{name}.py" for name in MESH_CORE]
    paths += [p for p in PKG.glob("mesh/ownership*.py") if p.name != "ownership_driver.py"]
    paths += list(PKG.glob("mesh/ownership/*.py"))  # the ownership core's package
    core = {p for p in paths if p.exists() and str(p.relative_to(PKG)) not in NOT_CORE}
    return sorted(core)


@dataclass
class Uses:
    """What one module imports, and any impure call it makes by attribute."""

    modules: set[str] = field(default_factory=set)
    impure: list[str] = field(default_factory=list)


def _package_of(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


def uses(path: pathlib.Path) -> Uses:
    out = Uses()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.modules.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(path).split(".")
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            out.modules.add(base)
            out.modules.update(f"{base}.{a.name}" for a in node.names)
            if base == "random":
                out.impure += [f"from random import {a.name}" for a in node.names
                               if a.name != "Random"]  # fmt: skip
            if base == "os" and any(a.name == "urandom" for a in node.names):
                out.impure.append("from os import urandom")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "os" and node.attr == "urandom":
                out.impure.append("os.urandom")
            if node.value.id == "random" and node.attr != "Random":
                out.impure.append(f"random.{node.attr}")
    return out


def module_path(name: str) -> pathlib.Path | None:
    if name != "meshlb" and not name.startswith("meshlb."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ too."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def impurities(start: pathlib.Path) -> list[str]:
    """Every forbidden import or call reachable from `start`, with the chain's link."""
    found: list[str] = []
    seen: set[pathlib.Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(ROOT)
        if str(path.relative_to(PKG)) in NOT_CORE:
            found.append(f"reaches the driver {rel}")
        u = uses(path)
        found += [f"{rel}: {call}" for call in u.impure]
        for name in u.modules:
            if name.split(".")[0] in FORBIDDEN:
                found.append(f"{rel} imports {name}")
            for dep_name in with_parents(name):
                dep = module_path(dep_name)
                if dep is not None:
                    todo.append(dep)
    return sorted(set(found))


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in core_modules()]
)
def test_core_module_reaches_no_io_clock_threads_or_os_randomness(path: pathlib.Path) -> None:
    assert impurities(path) == []


def test_the_walk_covers_every_core_and_sees_through_chains() -> None:
    names = {str(p.relative_to(PKG)) for p in core_modules()}
    assert {"gossip/membership.py", "sched/scheduler.py", "mesh/placement.py",
            "mesh/ownership_wire.py", "tokens.py"} <= names  # fmt: skip
    assert not names & NOT_CORE and "mesh/ownership_driver.py" not in names
    # the walk follows imports: the ownership driver reaches trio through itself
    assert any("imports trio" in f for f in impurities(PKG / "mesh" / "ownership_driver.py"))


def test_the_call_checks_see_calls_and_from_imports(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os, random\nfrom random import choice\nx = os.urandom(4)\n"
                   "y = random.random()\nr = random.Random(1)\n")  # fmt: skip
    assert sorted(uses(src).impure) == ["from random import choice", "os.urandom",
                                        "random.random"]  # fmt: skip


def test_no_type_ignores_stubs_or_long_files_in_the_cores() -> None:
    for path in core_modules():
        text = path.read_text()
        assert "NotImplementedError" not in text, path
        assert len(text.splitlines()) <= 400, path
        if path.parent.name == "gossip":
            assert "type: ignore" not in text, path
