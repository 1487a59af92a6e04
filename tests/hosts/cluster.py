"""Skald on several hosts (network namespaces, tests/hosts/netns.py), as a deployment runs it.

Hosts: ``redis1..3`` (a Redis server each, ``redis1`` the first master, the
others its replicas, and a Sentinel beside each), ``worker1/2`` (a Celery
worker each), ``web1/2`` (``python -m web serve``) behind ``lb`` (HAProxy
with deploy/haproxy.cfg), ``bridge1/2`` (``python -m bridge``: active and
standby under the Redis lease) and ``watcher`` (Socket.IO clients,
tests/hosts/watcher.py, and the CLI). Files (the SQLite database, uploads)
are shared, as a network file system or PostgreSQL would share them.

With ``sentinel=True`` every process gets
``REDIS_URL=redis+sentinel://redis1:26379,redis2:26379,redis3:26379/0/skald``;
otherwise the plain ``redis://`` address of ``redis1``.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import requests

from settings import Settings, load_settings
from tests.hosts.netns import Host, Network
from tests.support import ROOT, Proc, make_image, submit_job, wait_for, wait_http, worker_env

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
MASTER = "skald"
WEB_PORT = 5000
LB_PORT = 8080
VISIBILITY_TIMEOUT = 8  # s: a cut-off worker's job is given back this long after it was taken
IMAGE_SECONDS = 0.5     # s each image waits on the test worker (tests/hosts/slow_worker.py)
HOSTS = ("redis1", "redis2", "redis3", "worker1", "worker2", "web1", "web2", "lb",
         "bridge1", "bridge2", "watcher")


def missing_programs() -> list[str]:
    return [name for name, path in (("haproxy", HAPROXY), ("redis-server", REDIS))
            if not Path(path).exists()]


class Cluster:
    def __init__(self, base: Path, sentinel: bool = False, env: dict[str, str] | None = None) -> None:
        """``env``: more settings for every Skald process (e.g. the sweeper's, for the bench)."""
        self.base = base
        (base / "logs").mkdir(parents=True, exist_ok=True)
        self.net = Network(base / "logs")
        self.h: dict[str, Host] = {name: self.net.add(name) for name in HOSTS}
        self.sentinel = sentinel
        r1 = self.h["redis1"].address
        if sentinel:
            nodes = ",".join(f"{self.h[f'redis{i}'].address}:26379" for i in (1, 2, 3))
            redis_url = f"redis+sentinel://{nodes}/0/{MASTER}"
        else:
            redis_url = f"redis://{r1}:6379/0"
        self.settings: Settings = load_settings(env={}).with_overrides(
            redis_url=redis_url, broker_url=redis_url,
            database_url=f"sqlite:///{base / 'skald.db'}", upload_dir=base / "uploads",
            var_dir=base / "var", secret_key="hosts-secret", captioner="basic",
            uploads_per_minute=1000, reconcile_seconds=2.0, visibility_timeout=VISIBILITY_TIMEOUT)
        self.env = worker_env(self.settings)
        self.env.update({"LEADER_TTL_SECONDS": "3", "VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
                         "HOSTS_IMAGE_SECONDS": str(IMAGE_SECONDS), "SOCKET_RATE": "1000",
                         "SOCKET_BURST": "1000", "WORKER_OFFLINE_AFTER": "5",
                         "CONNECTIONS_PER_USER": "200",
                         # The sweeper (bridge/sweeper.py) within a scenario's time: a job the
                         # broker lost in a failover is sent again after 20 s, not 120.
                         "SWEEP_AFTER": "20", "SWEEP_SECONDS": "2", **(env or {})})
        self.lb_url = f"http://{self.h['lb'].address}:{LB_PORT}"
        self.procs: dict[str, Proc] = {}
        self._images = 0

    # -- starting ------------------------------------------------------------------
    def start(self) -> Cluster:
        self.start_redis()
        for name in ("worker1", "worker2"):
            self.start_worker(name, wait=False)
        for name in ("web1", "web2"):
            self.start_web(name, wait=False)
        self.start_bridge("bridge1", wait=False)
        self.start_lb()
        for name in ("worker1", "worker2"):
            self.wait_log(name, "ready.", 90)
        for name in ("web1", "web2"):
            self.wait_web(name)
        self.wait_log("bridge1", "event stream connected", 60)
        self.start_bridge("bridge2")  # after bridge1 is active: it stays the standby
        wait_for(self.lb_up, 20, what="haproxy")
        return self

    def start_redis(self) -> None:
        master = self.h["redis1"].address
        for i in (1, 2, 3):
            host = self.h[f"redis{i}"]
            data = self.base / f"redis{i}"
            data.mkdir(exist_ok=True)
            argv = [REDIS, "--port", "6379", "--bind", host.address, "127.0.0.1",
                    "--protected-mode", "no", "--save", "", "--appendonly", "no",
                    "--dir", str(data), "--loglevel", "notice"]
            # No min-replicas-to-write: a new master refuses writes with NOREPLICAS while
            # its replicas are being reconfigured, and a Celery worker treats that reply as
            # unrecoverable and exits (both workers did, in bench/failover.py).
            if i > 1:
                argv += ["--replicaof", master, "6379"]
            self._run(host, f"redis{i}", argv, {})
            conf = self.base / f"sentinel{i}.conf"
            conf.write_text(
                f"port 26379\nbind {host.address} 127.0.0.1\nprotected-mode no\n"
                f"dir {data}\nsentinel resolve-hostnames no\n"
                f"sentinel monitor {MASTER} {master} 6379 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 4000\n"
                f"sentinel parallel-syncs {MASTER} 2\n")
            self._run(host, f"sentinel{i}", [REDIS, str(conf), "--sentinel"], {})
        for i in (1, 2, 3):
            wait_for(lambda i=i: "Ready to accept connections" in self.procs[f"redis{i}"].log(),
                     10, what=f"redis{i}")
        wait_for(lambda: all("+slave" in self.procs[f"sentinel{i}"].log() or
                             "+replica" in self.procs[f"sentinel{i}"].log() for i in (1, 2, 3)),
                 15, what="sentinels to see the replicas")

    def _run(self, host: Host, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = host.run(name, argv, self.env if env is None else env)
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str, wait: bool = True) -> Proc:
        argv = [sys.executable, "-m", "celery", "-A", "tests.hosts.slow_worker", "worker", "-E",
                "--loglevel=INFO", "-n", f"{name}@{name}", "-c", "1",
                "--without-mingle", "--without-gossip"]
        proc = self._run(self.h[name], name, argv)
        if wait:
            self.wait_log(name, "ready.", 90)
        return proc

    def start_web(self, name: str, wait: bool = True) -> Proc:
        env = {**self.env, "WEB_HOST": "0.0.0.0", "WEB_PORT": str(WEB_PORT)}
        proc = self._run(self.h[name], name, [sys.executable, "-m", "web", "serve"], env)
        if wait:
            self.wait_web(name)
        return proc

    def start_bridge(self, name: str, wait: bool = True) -> Proc:
        proc = self._run(self.h[name], name, [sys.executable, "-m", "bridge"])
        if wait:
            self.wait_log(name, ("event stream connected", "bridge standby"), 60)
        return proc

    def start_lb(self) -> Proc:
        h = self.h
        env = {"SKALD_LB_BIND": f"{h['lb'].address}:{LB_PORT}",
               "SKALD_WEB1": f"{h['web1'].address}:{WEB_PORT}",
               "SKALD_WEB2": f"{h['web2'].address}:{WEB_PORT}"}
        return self._run(h["lb"], "haproxy", [HAPROXY, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                         env)

    # -- waiting -------------------------------------------------------------------
    def wait_log(self, name: str, text: str | tuple[str, ...], timeout: float = 30) -> None:
        proc = self.procs[name]
        texts = (text,) if isinstance(text, str) else text
        wait_for(lambda: any(t in proc.log() for t in texts) or not proc.alive(), timeout,
                 what=f"{name}: {texts}")
        assert proc.alive(), f"{name} exited:\n{proc.log()[-3000:]}"

    def wait_web(self, name: str) -> None:
        url = f"http://{self.h[name].address}:{WEB_PORT}/healthz"
        wait_http(self.procs[name], url, 60, f"web {name}", interval=0.2)

    def lb_up(self) -> bool:
        try:
            return requests.get(f"{self.lb_url}/healthz", timeout=1).status_code in (200, 503)
        except requests.RequestException:
            return False

    def master(self) -> str:
        """The Redis host the sentinels now name as master (asked from a reachable one)."""
        import redis

        by_address = {self.h[f"redis{i}"].address: f"redis{i}" for i in (1, 2, 3)}
        for i in (1, 2, 3):
            try:
                sentinel = redis.Redis(host=self.h[f"redis{i}"].address, port=26379,
                                       socket_timeout=1, socket_connect_timeout=1)
                host, _port = sentinel.sentinel_get_master_addr_by_name(MASTER)
                return by_address[host.decode() if isinstance(host, bytes) else host]
            except (redis.RedisError, OSError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def active_bridge(self) -> str:
        """The bridge host whose lease token is the one in Redis now."""
        import redisurl
        from bridge.lease import LEASE_KEY

        def holder() -> str | None:
            token = redisurl.client(self.settings.redis_url).get(LEASE_KEY)
            token = token.decode() if isinstance(token, bytes) else token
            return next((b for b in ("bridge1", "bridge2")
                         if token and f"lease {token}" in self.procs[b].log()), None)
        return wait_for(holder, 30, interval=0.1, what="an active bridge")

    def replicas_in_sync(self) -> bool:
        """Whether all three sentinels name the same master and it has both other Redis
        servers as replicas online (a sentinel back from a partition names the old one
        for a while)."""
        import redis

        try:
            views = {redis.Redis(host=self.h[f"redis{i}"].address, port=26379, socket_timeout=1,
                                 socket_connect_timeout=1).sentinel_get_master_addr_by_name(MASTER)
                     for i in (1, 2, 3)}
            if len(views) != 1:
                return False
            host = next(iter(views))[0]
            info = redis.Redis(host=host, port=6379, socket_timeout=1,
                               socket_connect_timeout=1).info("replication")
        except (redis.RedisError, OSError, RuntimeError, TypeError):
            return False
        return info.get("connected_slaves") == 2 and all(
            info.get(f"slave{i}", {}).get("state") == "online" for i in (0, 1))

    # -- using it --------------------------------------------------------------------
    def user(self, name: str) -> dict:
        from tasks.db import session_scope
        from web.auth import create_user

        with session_scope(self.settings.database_url) as db:
            _, token = create_user(db, name)
        return {"name": name, "token": token, "headers": {"Authorization": f"Bearer {token}"}}

    def images(self, n: int) -> list[Path]:
        folder = self.base / "images"
        folder.mkdir(exist_ok=True)
        out = []
        for _ in range(n):
            self._images += 1
            out.append(make_image(folder / f"i{self._images}.png", self._images))
        return out

    def submit(self, user: dict, n: int) -> str:
        """A job of ``n`` small images, through the load balancer; its task id."""
        return submit_job(self.lb_url, user, self.images(n))["task_id"]

    def watch(self, user: dict, task_ids: list[str], clients: int = 2,
              transport: str = "websocket", timeout: float = 120) -> WatchRun:
        out = self.base / f"watch-{time.time_ns()}.jsonl"
        argv = [sys.executable, "-m", "tests.hosts.watcher", "--url", self.lb_url,
                "--token", user["token"], "--out", str(out), "--clients", str(clients),
                "--transport", transport, "--timeout", str(timeout), *task_ids]
        proc = self.h["watcher"].run(f"watch{len(self.h['watcher'].procs)}", argv, self.env)
        run = WatchRun(proc, out, task_ids, clients)
        wait_for(lambda: run.has("ready") or not proc.alive(), 90, interval=0.1,
                 what="the watchers to connect")
        assert proc.alive() or run.has("finished"), proc.log()
        return run

    def close(self) -> None:
        self.net.close()
        from tasks.db import dispose_all
        dispose_all()


class WatchRun:
    """What one watcher program (tests/hosts/watcher.py) recorded."""

    ENDINGS = ("task_completed", "task_cancelled", "task_error")

    def __init__(self, proc: Proc, path: Path, task_ids: list[str], clients: int) -> None:
        self.proc, self.path, self.task_ids, self.clients = proc, path, task_ids, clients

    def items(self) -> list[dict]:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def has(self, event: str) -> bool:
        return any(i["event"] == event for i in self.items())

    def wait(self, timeout: float = 120) -> None:
        wait_for(lambda: not self.proc.alive(), timeout, interval=0.2, what="the watchers to finish")
        assert self.proc.popen.returncode == 0, f"watchers did not finish:\n{self.summary()}"

    def wait_for(self, event: str, timeout: float = 30, **match: object) -> dict:
        """The first ``event`` (matching ``match``), waited for; what was recorded on failure."""
        try:
            return wait_for(lambda: self.first(event, **match), timeout, what=f"{event} {match}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.summary()}") from None

    def first(self, event: str, after: float = 0.0, **match: object) -> dict | None:
        for i in self.items():
            if i["event"] == event and i["t"] >= after and all(i.get(k) == v for k, v in match.items()):
                return i
        return None

    def endings(self) -> dict[tuple[int, str], list[str]]:
        """``{(client, task_id): [ending names]}`` for every client and task."""
        out: dict[tuple[int, str], list[str]] = {(c, t): [] for c in range(self.clients)
                                                  for t in self.task_ids}
        for i in self.items():
            if i["event"] in self.ENDINGS and (i.get("client"), i.get("task_id")) in out:
                out[(i["client"], i["task_id"])].append(i["event"])
        return out

    def after_ending(self) -> list[dict]:
        """Task events a client received after that task's ending (must be none)."""
        seen: set[tuple[int, str]] = set()
        bad = []
        for i in self.items():
            key = (i.get("client"), i.get("task_id"))
            if key in seen and i["event"] in ("progress_update", *self.ENDINGS):
                bad.append(i)
            if i["event"] in self.ENDINGS:
                seen.add(key)
        return bad

    def assert_exactly_once(self, expected: str = "task_completed") -> None:
        wrong = {k: v for k, v in self.endings().items() if v != [expected]}
        assert not wrong, f"endings not exactly one {expected}: {wrong}\n{self.summary()}"
        assert not self.after_ending(), self.after_ending()

    def summary(self) -> str:
        return "\n".join(json.dumps(i) for i in self.items()[-40:]) + "\n" + self.proc.log()[-2000:]
