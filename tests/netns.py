"""Linux network namespaces on one bridge, for tests that cut a node off the network.

`netns_mesh(n)` makes n namespaces, each with `lo` up and one veth whose other end
hangs on a bridge in the root namespace (the bridge has the `.254` address, so the
test process reaches every namespace directly). `cut(i)` / `heal(i)` take namespace
i's host-side veth down / up: a clean partition of that namespace from all others,
and from the test process too (while cut, talk to it only through its log).

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip`; otherwise the caller's test
is skipped, with the reason. Everything made here is removed on exit, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

# 10.213.X.0/24: private, and unlikely on a developer machine or a CI runner; the
# first X (starting from one picked by pid) with no address or route on it is used.
SUBNET_PREFIX = "10.213"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raise with its stderr when `check` and it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done


@dataclass
class NetnsMesh:
    """n namespaces on one bridge; index i has address `addrs[i]`."""

    tag: str
    subnet: str  # "10.213.X"
    names: list[str] = field(default_factory=list)  # namespace names
    host_veths: list[str] = field(default_factory=list)  # root-side veth ends
    bridge: str = ""

    @property
    def addrs(self) -> list[str]:
        return [f"{self.subnet}.{i + 1}" for i in range(len(self.names))]

    @property
    def bridge_addr(self) -> str:
        return f"{self.subnet}.254"

    def exec_argv(self, i: int, argv: list[str]) -> list[str]:
        """argv that runs inside namespace i (`ip netns exec` execs, so the pid is argv's)."""
        return ["ip", "netns", "exec", self.names[i], *argv]

    def cut(self, i: int) -> None:
        ip("link", "set", self.host_veths[i], "down")

    def heal(self, i: int) -> None:
        ip("link", "set", self.host_veths[i], "up")


def skip_unless_netns_possible() -> None:
    if shutil.which("ip") is None:
        pytest.skip("needs the `ip` tool (iproute2) to make network namespaces")
    if os.geteuid() != 0:
        pytest.skip("needs root to make network namespaces (run the test as root)")


def pick_subnet() -> str:
    """The first 10.213.X.0/24 with no address or route on this host."""
    used = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show", "table", "all").stdout
    start = os.getpid() % 200
    for k in range(200):
        subnet = f"{SUBNET_PREFIX}.{(start + k) % 200}"
        if f"{subnet}." not in used:
            return subnet
    pytest.skip(f"every {SUBNET_PREFIX}.X.0/24 (X < 200) is in use on this host")


@contextlib.contextmanager
def netns_mesh(n: int) -> Iterator[NetnsMesh]:
    """n namespaces (names `mlb<pid>a`, `mlb<pid>b`, …) on a bridge `mlb<pid>br`."""
    skip_unless_netns_possible()
    tag = f"mlb{os.getpid()}"
    mesh = NetnsMesh(tag=tag, subnet=pick_subnet())
    try:
        probe = ip("netns", "add", f"{tag}a", check=False)
        if probe.returncode != 0:
            pytest.skip(f"cannot make a network namespace (`ip netns add`): {probe.stderr}")
        mesh.names.append(f"{tag}a")
        for i in range(1, n):
            mesh.names.append(f"{tag}{chr(ord('a') + i)}")
            ip("netns", "add", mesh.names[-1])
        mesh.bridge = f"{tag}br"
        made = ip("link", "add", mesh.bridge, "type", "bridge", check=False)
        if made.returncode != 0:
            mesh.bridge = ""
            pytest.skip(f"cannot make a bridge (`ip link add type bridge`): {made.stderr}")
        ip("addr", "add", f"{mesh.bridge_addr}/24", "dev", mesh.bridge)
        ip("link", "set", mesh.bridge, "up")
        for i, ns in enumerate(mesh.names):
            host = f"{tag}v{chr(ord('a') + i)}"
            ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
            mesh.host_veths.append(host)
            ip("link", "set", host, "master", mesh.bridge)
            ip("link", "set", host, "up")
            ip("-n", ns, "addr", "add", f"{mesh.addrs[i]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield mesh
    finally:
        for ns in mesh.names:  # takes the veth pair with it
            ip("netns", "del", ns, check=False)
        for host in mesh.host_veths:  # already gone unless the namespace lingered
            ip("link", "del", host, check=False)
        if mesh.bridge:
            ip("link", "del", mesh.bridge, check=False)
