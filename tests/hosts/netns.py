"""Hosts as Linux network namespaces on one Linux bridge device (the several-hosts tier).

:class:`Network` makes a bridge device and one namespace per host, each joined
to the bridge by a veth pair and given its own 10.x.y.z/24 address; the root
namespace gets ``.1`` on the bridge so the test process can reach every host.
Processes run inside a host with ``ip netns exec`` (the same files, the same
venv, the host's own network). :meth:`Host.cut` takes the host's cable out
(its veth end in the root namespace goes down: packets vanish, nothing is
refused, like a real partition) and :meth:`Host.kill` kills its processes.

Names carry a random run id (``sk<id>...``), so parallel runs never collide,
and :meth:`Network.close` always removes what was made (killing the processes
first); it is also registered with :mod:`atexit`.
"""
from __future__ import annotations

import atexit
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support import Proc

IP = shutil.which("ip") or "/usr/sbin/ip"


class NetnsUnavailable(RuntimeError):
    """This machine cannot make network namespaces (not root, no iproute2, a sandbox)."""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ...`` (or any command) and raise with its stderr when it fails."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def unavailable_reason() -> str | None:
    """Why the tier cannot run here (None: it can): root, ``ip netns``, a veth pair."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if not os.path.exists(IP):
        return "iproute2 (`ip`) is not installed"
    probe = f"skprobe{secrets.token_hex(3)}"
    try:
        made = sh(IP, "netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` fails here: {made.stderr.strip()}"
        veth = sh(IP, "link", "add", f"{probe}a", "type", "veth", "peer", "name", f"{probe}b",
                  "netns", probe, check=False)
        if veth.returncode != 0:
            return f"cannot make veth pairs: {veth.stderr.strip()}"
        sh(IP, "link", "del", f"{probe}a", check=False)
    finally:
        sh(IP, "netns", "del", probe, check=False)
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no interface of this machine overlaps yet."""
    text = sh(IP, "-o", "-4", "addr", "show", check=False).stdout
    used = [ipaddress.ip_interface(m).network for m in re.findall(r"inet (\S+)", text)]
    for _ in range(50):
        net = ipaddress.ip_network(f"10.{secrets.randbelow(100) + 120}.{secrets.randbelow(254) + 1}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet")


class Host:
    """One namespace with one address; the processes it runs are kept for :meth:`kill`."""

    def __init__(self, network: Network, name: str, address: str, netns: str, veth: str) -> None:
        self.network = network
        self.name = name
        self.address = address
        self.netns = netns
        self.veth = veth  # our end, in the root namespace
        self.procs: list[Proc] = []

    def run(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        """Start ``argv`` inside this host (log in the network's log directory)."""
        proc = Proc(f"{self.name}-{name}", [IP, "netns", "exec", self.netns, *argv], env,
                    self.network.log_dir).start()
        self.procs.append(proc)
        return proc

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(IP, "netns", "exec", self.netns, *argv, check=check)

    def cut(self) -> None:
        """Partition the host away: its cable goes dead (no RST, no refusal: silence)."""
        sh(IP, "link", "set", self.veth, "down")

    def restore(self) -> None:
        sh(IP, "link", "set", self.veth, "up")

    def kill(self) -> None:
        """SIGKILL every process this host runs (a host that died)."""
        for proc in self.procs:
            proc.kill()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=5)


class Network:
    """A bridge device and hosts on it; ``close()`` removes all of it (idempotent)."""

    def __init__(self, log_dir: Path) -> None:
        self.id = secrets.token_hex(3)
        self.log_dir = log_dir
        self.subnet = _free_subnet()
        self.bridge = f"skb{self.id}"
        self.hosts: dict[str, Host] = {}
        self._closed = False
        atexit.register(self.close)
        sh(IP, "link", "add", self.bridge, "type", "bridge")
        self.gateway = str(self.subnet.network_address + 1)
        sh(IP, "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh(IP, "link", "set", self.bridge, "up")

    def add(self, name: str) -> Host:
        """A new host ``name`` at the next address (.11, .12, ...)."""
        n = len(self.hosts)
        address = str(self.subnet.network_address + 11 + n)
        netns = f"sk{self.id}-{name}"
        outer, inner = f"sk{self.id}h{n:02d}", f"sk{self.id}i{n:02d}"
        sh(IP, "netns", "add", netns)
        host = Host(self, name, address, netns, outer)
        self.hosts[name] = host
        sh(IP, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", netns)
        sh(IP, "link", "set", outer, "master", self.bridge)
        sh(IP, "link", "set", outer, "up")
        host.exec(IP, "link", "set", "lo", "up")
        host.exec(IP, "link", "set", inner, "name", "eth0")
        host.exec(IP, "addr", "add", f"{address}/24", "dev", "eth0")
        host.exec(IP, "link", "set", "eth0", "up")
        return host

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            for proc in host.procs:
                if proc.alive():
                    proc.signal(signal.SIGKILL)
                    proc.popen.wait(5)
        for host in self.hosts.values():
            # Our end first: the kernel frees a deleted namespace (and its veth end) lazily.
            sh(IP, "link", "del", host.veth, check=False)
            sh(IP, "netns", "del", host.netns, check=False)
        sh(IP, "link", "del", self.bridge, check=False)
