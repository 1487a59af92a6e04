"""Shared helpers: a private stack (Redis, bridge, web, worker), statistics, profiles.

Everything a benchmark starts is registered on a :class:`Stack` and stopped by
its ``close()`` (also on error or Ctrl-C), so no process outlives a run.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from devstack import RedisProcess, free_port
from settings import Settings, load_settings
from tests.support import ProcessSet, wait_for, worker_env

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
PY = sys.executable

# The per-user and per-connection limits of the web process, lifted for the bench
# (its clients are one user opening thousands of connections and joining rooms, all
# from one loopback address, so the per-IP cap on connections not yet authenticated
# would measure the cap, not the server).
BENCH_ENV = {
    "CONNECTIONS_PER_USER": "100000",
    "UNAUTH_CONNECTIONS_PER_IP": "0",
    "SOCKET_RATE": "100000",
    "SOCKET_BURST": "100000",
    "UPLOADS_PER_MINUTE": "100000",
    "CAPTIONER": "basic",
}


# -- statistics -----------------------------------------------------------------
def pct(values: Iterable[float], q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    k = (len(data) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary(values: Iterable[float], scale: float = 1.0, digits: int = 2) -> dict:
    """n, p50, p90, p99, max, mean (each multiplied by ``scale``)."""
    data = sorted(values)
    if not data:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}

    def r(x: float) -> float:
        return round(x * scale, digits)
    return {"n": len(data), "p50": r(pct(data, 0.5)), "p90": r(pct(data, 0.9)),
            "p99": r(pct(data, 0.99)), "max": r(data[-1]), "mean": r(statistics.fmean(data))}


def median(values: Iterable[float]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, digits)


# -- machine ----------------------------------------------------------------------
def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info(redis_url: str | None = None) -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(), "cpu": cpu,
        "python": platform.python_version(), "platform": platform.platform(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    for dist in ("celery", "kombu", "flower", "redis", "python-socketio", "python-engineio",
                 "Flask-SocketIO", "gevent", "aiohttp", "tornado", "py-spy", "orjson", "hiredis"):
        info[dist] = _version(dist)
    info["redis_parser"] = "hiredis parser" if info.get("hiredis") else "pure-Python parser"
    if redis_url:
        try:
            info["redis_server"] = redis.Redis.from_url(redis_url).info("server")["redis_version"]
        except redis.RedisError:
            pass
    else:
        try:
            out = subprocess.run([RedisProcess().binary, "--version"], capture_output=True,
                                 text=True, timeout=10).stdout
            info["redis_server"] = out.split("v=")[1].split()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
    return info


def raise_nofile(want: int = 65536) -> int:
    """Lift RLIMIT_NOFILE (inherited by the processes we start); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


# -- the stack ----------------------------------------------------------------------
@dataclass
class Stack:
    """A private Redis, a bench database and settings; processes started on them."""

    quick: bool = False
    redis_args: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="skald-bench-"))
        self.redis = RedisProcess()
        self.procs = ProcessSet()
        self._children: list[subprocess.Popen] = []
        self.settings: Settings | None = None
        self.env: dict[str, str] = {}

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        raise_nofile()
        self.redis.start()
        cfg = {"client-output-buffer-limit": "pubsub 0 0 0", **self.redis_args}
        for k, v in cfg.items():
            self.client().config_set(k, v)
        url = self.redis.url
        self.settings = load_settings(env={}).with_overrides(
            redis_url=url, broker_url=url, database_url=f"sqlite:///{self.dir / 'skald.db'}",
            upload_dir=self.dir / "uploads", var_dir=self.dir / "var", secret_key="bench-secret",
            socket_rate=100000.0, socket_burst=100000, connections_per_user=100000,
            uploads_per_minute=100000)
        self.env = {**worker_env(self.settings), **BENCH_ENV, **self.extra_env}
        (self.dir / "uploads").mkdir(exist_ok=True)

    @property
    def url(self) -> str:
        return self.redis.url

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(f"redis://127.0.0.1:{self.redis.port}/{db}")

    def popen(self, argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen:
        """A child we stop in close() (stdin/stdout pipes unless told otherwise)."""
        kw.setdefault("stdin", subprocess.PIPE)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", open(self.dir / f"child-{len(self._children)}.log", "wb"))
        proc = subprocess.Popen(argv, env=env or self.env, cwd=ROOT, text=True,
                                start_new_session=True, **kw)
        self._children.append(proc)
        return proc

    def start_bridge(self, name: str = "bridge", env: dict[str, str] | None = None):
        return self.procs.start_bridge(name, {**self.env, **(env or {})})

    def start_bridge_timed(self, stats: Path, name: str = "bridge"):
        """The bridge under bench/bridge_timed.py (SIGUSR1 writes its step timings to ``stats``)."""
        env = {**self.env, "BENCH_BRIDGE_STATS": str(stats)}
        return self.procs.start_bridge(name, env, [PY, "-m", "bench.bridge_timed"])

    def start_web(self, name: str = "web", env: dict[str, str] | None = None,
                  argv: list[str] | None = None):
        """``python -m web serve`` (or ``argv``) on a free port; returns the Proc (``.url``)."""
        return self.procs.start_web(name, {**self.env, **(env or {})}, free_port(), argv)

    def start_worker(self, name: str, concurrency: int = 1, extra: list[str] | None = None,
                     app: str = "worker", env: dict[str, str] | None = None):
        argv = [PY, "-m", "celery", "-A", app, "worker", "-E", "--loglevel=INFO",
                "-n", f"{name}@%h", "-c", str(concurrency), "--without-mingle",
                "--without-gossip", "--without-heartbeat", *(extra or [])]
        proc = self.procs.start(name, argv, {**self.env, **(env or {})})
        wait_for(lambda: "ready" in proc.log() or not proc.alive(), 60, what=f"worker {name}")
        assert proc.alive(), proc.log()
        return proc

    def add_user(self, name: str, admin: bool = False) -> str:
        """``python -m web user add NAME``; returns the API token (its last line)."""
        argv = [PY, "-m", "web", "user", "add", name] + (["--admin"] if admin else [])
        out = subprocess.run(argv, env=self.env, cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"user add failed: {out.stderr}")
        return out.stdout.strip().splitlines()[-1]

    def create_jobs(self, owner: str, task_ids: list[str], total: int = 0) -> list[int]:
        """Job rows (no images) so watchers may join these tasks' rooms."""
        from sqlalchemy import insert, select

        from tasks.db import session_scope
        from tasks.models import Job, User

        now = time.time()
        with session_scope(self.settings.database_url) as db:
            owner_id = db.scalar(select(User.id).where(User.name == owner))
            db.execute(insert(Job), [
                {"task_id": t, "owner_id": owner_id, "state": "PENDING", "total": total,
                 "current_step": "queued", "created_at": now, "updated_at": now}
                for t in task_ids])
            rows = db.execute(select(Job.task_id, Job.id).where(Job.task_id.in_(task_ids))).all()
        ids = dict(rows)
        return [ids[t] for t in task_ids]

    def close(self) -> None:
        for proc in self._children:
            stop_child(proc)
        self.procs.stop_all()
        self.redis.stop()
        from tasks.db import dispose_all

        dispose_all()
        shutil.rmtree(self.redis.dir, ignore_errors=True)
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


def stop_child(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(5)


def wait_numpat(client: redis.Redis, want: int, timeout: float = 30.0, proc=None) -> None:
    """Until ``want`` pattern subscriptions exist (a Celery event receiver is consuming)."""
    def ok() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"consumer exited with {proc.returncode}")
        return client.pubsub_numpat() >= want
    wait_for(ok, timeout, 0.02, what=f"{want} pattern subscriber(s)")


def read_json_line(proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    """The next stdout line of a child, as JSON (a child prints one JSON object per line)."""
    import select

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from child")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"child exited ({proc.poll()})")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        elif proc.poll() is not None:
            raise RuntimeError(f"child exited ({proc.returncode})")


def send_line(proc: subprocess.Popen, line: str) -> None:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


# -- profiles ---------------------------------------------------------------------------
def pyspy_start(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen | None:
    """``py-spy record`` (raw collapsed stacks, all threads, idle frames dropped)."""
    exe = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(exe).exists():
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(max(1, seconds))),
                             "--rate", str(rate), "--format", "raw", "--nonblocking", "--threads",
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pyspy_summary(path: Path, top: int = 14, thread_filter: str | None = None) -> dict:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    if not path.exists():
        return {"samples": 0}
    self_c: Counter = Counter()
    incl: Counter = Counter()
    threads: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        frames = stack.split(";")
        if thread_filter and thread_filter not in frames[0]:
            continue
        total += n
        threads[frames[0][:60]] += n
        names = [_short(f) for f in frames[1:]] or ["?"]
        self_c[names[-1]] += n
        for name in set(names):
            if not name.startswith(GENERIC) and not any(g in name for g in GENERIC[5:7]):
                incl[name] += n
    if not total:
        return {"samples": 0}

    def share(c: Counter) -> list[list]:
        return [[name, round(100.0 * k / total, 1)] for name, k in c.most_common(top)]
    return {"samples": total, "self": share(self_c), "inclusive": share(incl),
            "threads": share(threads)}


GENERIC = ("Thread._bootstrap", "Thread.run ", "<module>", "_run_code", "_run_module_as_main",
           "main (bench/", "run_forever", "_run_once", "Greenlet.run", "Hub.run", "BaseEventLoop.",
           "BaseAsyncIOLoop.start", "Thread._bootstrap_inner", "Retry.call_with_retry",
           "deprecated_args.", "wait_done")


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def processor(max_tasks: int = 100_000):
    """A bridge processor (bridge/processor.py) with the default settings."""
    from bridge.processor import Processor

    return Processor(load_settings(env={}).with_overrides(bridge_max_tasks=max(1, max_tasks)))


def processor_step(proc: Any, events: list[dict], now: float) -> Any:
    """The bridge processor's pure step on one batch of events, as the bridge calls it:
    the return values of the caption jobs the batch ends (``results`` in the bench
    stream) come as the result backend's metas. Returns the step's ``Output``."""
    from bridge.processor import Events

    metas = {e["uuid"]: {"status": "SUCCESS", "result": e["results"]}
             for e in events if "results" in e}
    return proc.step([Events(events)], metas, now)


def write_json(name: str, data: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path
