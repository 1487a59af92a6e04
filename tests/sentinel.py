"""A real Redis Sentinel deployment for tests: a master, replicas and sentinels.

Reusable beyond one host: every node gets a host address (default 127.0.0.1)
and ``wrap(host, argv)`` may prefix its command (e.g. ``ip netns exec NS``), so
the multi-host tier can place each server in its own network namespace::

    cluster = SentinelCluster(tmp_path, replicas=1, sentinels=3).start()
    url = cluster.url            # redis+sentinel://127.0.0.1:p1,.../0/skald
    cluster.kill_master()        # SIGKILL; returns the promoted replica's address
    cluster.failover()           # SENTINEL FAILOVER (a clean switch)
    cluster.stop()

Sentinels decide quickly here (``down_after_ms`` 1000, so a killed master is
replaced in ~2-4 s); nothing is persisted (``save ""``, no AOF), like the
other test Redis servers. ``password`` protects the data nodes (the sentinels
then use ``sentinel auth-pass``); ``sentinel_password`` the sentinels themselves.
"""
from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis

from devstack import free_port, redis_server_binary

Wrap = Callable[[str, list[str]], list[str]]
MASTER_NAME = "skald"


def _q(value: str) -> str:
    """A value quoted for a redis.conf line (spaces, quotes and backslashes allowed)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Node:
    """One redis-server (data node or sentinel) with its config file and log."""

    name: str
    host: str
    port: int
    conf: Path
    log: Path
    argv: list[str]
    proc: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)

    def start(self) -> Node:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


class SentinelCluster:
    """Master + ``replicas`` replicas + ``sentinels`` sentinels (quorum: a majority)."""

    def __init__(self, base: Path, *, replicas: int = 1, sentinels: int = 3,
                 data_hosts: list[str] | None = None, sentinel_hosts: list[str] | None = None,
                 password: str | None = None, sentinel_password: str | None = None,
                 master_name: str = MASTER_NAME, down_after_ms: int = 1000,
                 wrap: Wrap | None = None, binary: str | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.base = Path(base)
        self.tls = tls  # (certificate, key): every node (and replication) over TLS only
        self.base.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.sentinel_password = sentinel_password
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.wrap = wrap or (lambda _host, argv: argv)
        self.binary = binary or redis_server_binary()
        self.quorum = sentinels // 2 + 1
        self._hosts = data_hosts or ["127.0.0.1"] * (1 + replicas)
        self._sentinel_hosts = sentinel_hosts or ["127.0.0.1"] * sentinels
        self._plan()

    def _plan(self) -> None:
        """Nodes on fresh free ports (again after a start that lost a port race)."""
        self.data: list[Node] = []
        for i, host in enumerate(self._hosts):  # the first is the master, the others replicate it
            self.data.append(self._data_node(f"redis{i}", host))
        self.sentinels = [self._sentinel_node(f"sentinel{i}", h) for i, h in enumerate(self._sentinel_hosts)]

    # -- configuration --------------------------------------------------------------
    def _data_node(self, name: str, host: str) -> Node:
        port = free_port()
        d = self.base / name
        d.mkdir(exist_ok=True)
        lines = [*self._listen(port), f"bind {host}", f"dir {d}", 'save ""', "appendonly no",
                 "protected-mode no", "loglevel notice", "repl-diskless-sync yes",
                 "repl-diskless-sync-delay 0"]
        if self.password:
            lines += [f"requirepass {_q(self.password)}", f"masterauth {_q(self.password)}"]
        if self.data:  # replicas follow the first node
            master = self.data[0]
            lines.append(f"replicaof {master.host} {master.port}")
        conf = d / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        return Node(name, host, port, conf, d / "log", self.wrap(host, [self.binary, str(conf)]))

    def _sentinel_node(self, name: str, host: str) -> Node:
        port = free_port()
        d = self.base / name
        d.mkdir(exist_ok=True)
        master = self.data[0]
        lines = [*self._listen(port), f"bind {host}", f"dir {d}", "protected-mode no",
                 f"sentinel monitor {self.master_name} {master.host} {master.port} {self.quorum}",
                 f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                 f"sentinel failover-timeout {self.master_name} 10000",
                 f"sentinel parallel-syncs {self.master_name} 1"]
        if self.password:
            lines.append(f"sentinel auth-pass {self.master_name} {_q(self.password)}")
        if self.sentinel_password:
            lines += [f"requirepass {_q(self.sentinel_password)}",
                      f"sentinel sentinel-pass {_q(self.sentinel_password)}"]
        conf = d / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        return Node(name, host, port, conf, d / "log",
                    self.wrap(host, [self.binary, str(conf), "--sentinel"]))

    def _listen(self, port: int) -> list[str]:
        if not self.tls:
            return [f"port {port}"]
        cert, key = self.tls
        return ["port 0", f"tls-port {port}", f"tls-cert-file {cert}", f"tls-key-file {key}",
                f"tls-ca-cert-file {cert}", "tls-auth-clients no", "tls-replication yes"]

    def _ssl(self) -> dict:
        return {"ssl": True, "ssl_ca_certs": str(self.tls[0])} if self.tls else {}

    # -- addresses --------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``REDIS_URL`` for this deployment (Skald's Sentinel form, redisurl.py)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        params = []
        if self.sentinel_password:
            params.append(f"sentinel_password={quote(self.sentinel_password, safe='')}")
        if self.tls:
            params.append(f"ssl_ca_certs={quote(str(self.tls[0]))}")
        query = "?" + "&".join(params) if params else ""
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{auth}{hosts}/0/{self.master_name}{query}"

    def sentinel_client(self, node: Node) -> redis.Redis:
        return redis.Redis(node.host, node.port, password=self.sentinel_password,
                           socket_timeout=1, socket_connect_timeout=1, decode_responses=True,
                           **self._ssl())

    def data_client(self, node: Node) -> redis.Redis:
        return redis.Redis(node.host, node.port, password=self.password,
                           socket_timeout=2, socket_connect_timeout=1, **self._ssl())

    def master_address(self) -> tuple[str, int] | None:
        """What a majority-reachable sentinel says the master is (None: none answers)."""
        for node in self.sentinels:
            if not node.alive():
                continue
            try:
                addr = self.sentinel_client(node).sentinel_get_master_addr_by_name(self.master_name)
            except (redis.RedisError, OSError):
                continue
            if addr:
                return addr[0], int(addr[1])
        return None

    def master(self) -> Node:
        host, port = self.master_address() or (None, None)
        for node in self.data:
            if (node.host, node.port) == (host, port):
                return node
        raise AssertionError(f"no data node at {host}:{port}")

    # -- life cycle -------------------------------------------------------------------
    def start(self, timeout: float = 30.0, attempts: int = 3) -> SentinelCluster:
        """Start every node and wait until the sentinels monitor the master and its replicas.

        A free port can be taken by another process before a node binds it (the port
        is only probed): then everything is planned again on new ports, ``attempts`` times.
        """
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except AssertionError:
                died = [n.name for n in (*self.data, *self.sentinels) if n.proc and not n.alive()]
                self.stop()
                if not died or attempt == attempts - 1:
                    raise AssertionError(f"Sentinel cluster did not start:\n{self.logs()}") from None
                self._plan()
        return self

    def _start(self, timeout: float) -> SentinelCluster:
        def up(nodes: list[Node], check: Callable[[], bool]) -> Callable[[], bool]:
            def pred() -> bool:
                if any(not n.alive() for n in nodes):
                    raise AssertionError("a node exited")
                return check()
            return pred
        for node in self.data:
            node.start()
        self._wait(up(self.data, lambda: all(self._answers(n) for n in self.data)), timeout,
                   "the data nodes")
        self._wait(up(self.data, self._replicas_synced), timeout, "the replicas to sync")
        for node in self.sentinels:
            node.start()
        self._wait(up(self.sentinels, self._sentinels_agree), timeout,
                   "the sentinels to find each other")
        return self

    def _answers(self, node: Node) -> bool:
        try:
            return bool(self.data_client(node).ping())
        except (redis.RedisError, OSError):
            return False

    def _replicas_synced(self) -> bool:
        try:
            info = self.data_client(self.data[0]).info("replication")
        except (redis.RedisError, OSError):
            return False
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                  and v.get("state") == "online"]
        return len(online) == len(self.data) - 1

    def _sentinels_agree(self) -> bool:
        for node in self.sentinels:
            try:
                state = self.sentinel_client(node).sentinel_master(self.master_name)
            except (redis.RedisError, OSError):
                return False
            if int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
            if int(state.get("num-slaves", 0)) < len(self.data) - 1:
                return False
        return True

    @staticmethod
    def _wait(pred: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def wait_master_change(self, old: tuple[str, int], timeout: float = 30.0) -> tuple[str, int]:
        """Until every live sentinel names a master other than ``old`` that accepts writes."""
        def moved() -> bool:
            addrs = set()
            for node in self.sentinels:
                if not node.alive():
                    continue
                try:
                    a = self.sentinel_client(node).sentinel_get_master_addr_by_name(self.master_name)
                except (redis.RedisError, OSError):
                    return False
                addrs.add((a[0], int(a[1])))
            if len(addrs) != 1 or old in addrs:
                return False
            try:
                return self.master().alive() and self.data_client(self.master()).info(
                    "replication")["role"] == "master"
            except (redis.RedisError, OSError):
                return False
        self._wait(moved, timeout, "the sentinels to promote a replica")
        return self.master_address()

    def kill_master(self, timeout: float = 30.0) -> tuple[str, int]:
        """SIGKILL the master (its data since the last replication is gone); the new one's address."""
        old = self.master()
        old.kill()
        return self.wait_master_change((old.host, old.port), timeout)

    def failover(self, timeout: float = 30.0) -> tuple[str, int]:
        """``SENTINEL FAILOVER``: promote a replica now (the old master becomes its replica)."""
        old = self.master_address()
        self.sentinel_client(self.sentinels[0]).execute_command("SENTINEL", "FAILOVER", self.master_name)
        return self.wait_master_change(old, timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log.read_text(errors='replace')[-3000:]}"
                         for n in (*self.data, *self.sentinels) if n.log.exists())

    def stop(self) -> None:
        for node in (*self.sentinels, *self.data):
            node.stop()
