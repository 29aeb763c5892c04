"""Faults injected into the cluster stack: a node's traffic dropped on loopback (nftables).

The rules live in one table of their own, FAULT_TABLE, so removing it removes every fault and
touches nothing else; the cluster tests remove it at the start of the session, after every
test and in `finally`, so a leftover rule can never break a later run.

A node's traffic is both what is sent to its address (its CQL and storage ports) and what its
own sockets send, matched by its cgroup (devtools/stack/cluster.py: node_cgroup): its outgoing
connections to the other nodes leave from 127.0.0.1, not from its address.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from devtools.stack import cluster

FAULT_TABLE = "programuser_fault"
BOOT_TIMEOUT_S = 900.0


def _nft(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft")
    if nft is None:
        raise RuntimeError("nft not found: `make cluster-deps` installs nftables")
    return subprocess.run([nft, *args], capture_output=True, text=True, check=check)


def heal_network() -> None:
    """Remove every fault rule (the whole table); nothing to remove is fine."""
    if shutil.which("nft") is None:
        return
    result = _nft("list", "tables", check=False)
    if f"inet {FAULT_TABLE}" in result.stdout:
        _nft("delete", "table", "inet", FAULT_TABLE)


@contextlib.contextmanager
def partitioned(name: str) -> Iterator[None]:
    """Drop every packet to and from Cassandra node `name` for the block."""
    n = cluster.node(name)
    group, root = cluster.node_cgroup_path(n), cluster.cgroup_root()
    if group is None or root is None or not group.is_dir():
        raise RuntimeError("no cgroup v2 group for the node: its own traffic cannot be told apart")
    nft_root = Path("/sys/fs/cgroup")  # where nft looks a group's path up
    if not group.is_relative_to(nft_root):
        raise RuntimeError(f"cgroup v2 is mounted at {root}, outside {nft_root}: nft cannot match")
    level = len(group.relative_to(root).parts)  # depth in the cgroup v2 tree
    relative = group.relative_to(nft_root)
    ports = f"{{ {cluster.CQL_PORT}, {cluster.STORAGE_PORT} }}"
    heal_network()
    _nft("add", "table", "inet", FAULT_TABLE)
    try:
        _nft("add", "chain", "inet", FAULT_TABLE, "output",
             "{ type filter hook output priority 0 ; }")
        _nft("add", "rule", "inet", FAULT_TABLE, "output", "ip", "daddr", n.address, "tcp",
             "dport", ports, "drop")
        _nft("add", "rule", "inet", FAULT_TABLE, "output", "socket", "cgroupv2", "level",
             str(level), f'"{relative}"', "drop")
        yield
    finally:
        heal_network()


@contextlib.contextmanager
def redirected(address: str, to: str, ports: tuple[int, ...]) -> Iterator[None]:
    """Connections to `address` on `ports` reach `to` instead (DNAT): a real node answering
    at an address its certificate does not name."""
    heal_network()
    _nft("add", "table", "inet", FAULT_TABLE)
    try:
        _nft("add", "chain", "inet", FAULT_TABLE, "nat_output",
             "{ type nat hook output priority -100 ; }")
        for port in ports:
            _nft("add", "rule", "inet", FAULT_TABLE, "nat_output", "ip", "daddr", address,
                 "tcp", "dport", str(port), "dnat", "ip", "to", f"{to}:{port}")
        yield
    finally:
        heal_network()


def restore() -> None:
    """Full health: no fault rule, every stopped node continued, every killed one started."""
    heal_network()
    for n in cluster.NODES:
        running = cluster.pid(n)
        if running is not None:
            os.kill(running, signal.SIGCONT)
    bring_back()


def bring_back() -> None:
    """Start the nodes a test killed and wait for full health; the nodes the test session
    started stay marked as its own, so that it stops them at the end."""
    cluster.up(timeout=BOOT_TIMEOUT_S, echo=print, adopt=False)


def unreachable(address: str, port: int) -> bool:
    """True when a connection to address:port gets no answer (dropped, not refused)."""
    try:
        with socket.create_connection((address, port), timeout=2):
            return False
    except TimeoutError:
        return True
    except OSError:
        return False
