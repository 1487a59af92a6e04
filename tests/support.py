"""Helpers for tests: real processes, images, event capture."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps knocking on closed doors.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLOURS = [(200, 30, 30), (30, 160, 60), (40, 80, 200), (240, 220, 40), (20, 20, 20),
           (250, 250, 250), (120, 60, 160), (250, 140, 20)]


def make_image(path: Path, i: int = 0, size: tuple[int, int] = (64, 48)) -> Path:
    Image.new("RGB", size, COLOURS[i % len(COLOURS)]).save(path)
    return path


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "REDIS_URL": settings.redis_url,
        "BROKER_URL": settings.broker_url,
        "DATABASE_URL": settings.database_url,
        "UPLOAD_DIR": str(settings.upload_dir),
        "SKALD_VAR_DIR": str(settings.var_dir),
        "SECRET_KEY": settings.secret_key or "test-secret",
        "CAPTIONER": settings.captioner,
        "RECONCILE_SECONDS": str(settings.reconcile_seconds),
        "CANCEL_GRACE_SECONDS": str(settings.cancel_grace_seconds),
        "SWEEP_AFTER": str(settings.sweep_after),
        "SWEEP_SECONDS": str(settings.sweep_seconds),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
    })
    return env


def submit_job(url: str, user: dict, paths) -> dict:
    """POST /api/jobs over real HTTP as ``user``; the 202 body."""
    import requests

    files = [("images", (Path(p).name, open(p, "rb"), "image/png")) for p in paths]
    resp = requests.post(f"{url}/api/jobs", headers=user["headers"], files=files, timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()


def csrf_token(client) -> str:
    """The CSRF token of a Flask test client's session, read off the login form."""
    page = client.get("/login").get_data(as_text=True)
    return page.split('name="csrf_token" value="')[1].split('"')[0]


def wait_for(pred: Callable[[], object], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Proc:
    """A child process with its output kept in a file (for failure messages)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            self.popen.wait(5)


def wait_http(proc: Proc, url: str, timeout: float, what: str, interval: float = 0.05) -> None:
    """Wait until ``url`` answers 2xx (or ``proc`` exits: then fail with its log)."""
    import requests

    def up() -> bool:
        if not proc.alive():
            return True
        try:
            return requests.get(url, timeout=1).ok
        except requests.RequestException:
            return False
    wait_for(up, timeout, interval=interval, what=what)
    assert proc.alive(), f"{what} exited:\n{proc.log()[-3000:]}"


class ProcessSet:
    def __init__(self) -> None:
        import tempfile

        self.log_dir = Path(tempfile.mkdtemp(prefix="skald-logs-"))
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, env, self.log_dir).start()
        self.procs.append(proc)
        return proc

    def start_worker(self, name: str, env: dict[str, str], settings: Settings,
                     concurrency: int = 2, extra: list[str] | None = None) -> Proc:
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-E",
                "--loglevel=INFO", "-n", f"{name}@%h", "-c", str(concurrency),
                "--without-mingle", "--without-gossip", *(extra or [])]
        proc = self.start(name, argv, env)
        wait_for(lambda: "ready." in proc.log() or not proc.alive(), 60, what=f"worker {name}")
        assert proc.alive(), proc.log()
        return proc

    def start_bridge(self, name: str, env: dict[str, str], argv: list[str] | None = None) -> Proc:
        """``python -m bridge`` (or ``argv``), once its event stream is connected."""
        proc = self.start(name, argv or [sys.executable, "-m", "bridge"], env)
        wait_for(lambda: "event stream connected" in proc.log() or not proc.alive(), 30,
                 what=f"bridge {name}")
        assert proc.alive(), proc.log()
        return proc

    def start_web(self, name: str, env: dict[str, str], port: int,
                  argv: list[str] | None = None) -> Proc:
        """``python -m web serve`` (or ``argv``) on ``port``, once /healthz answers."""
        env = {**env, "WEB_PORT": str(port), "WEB_HOST": "127.0.0.1"}
        proc = self.start(name, argv or [sys.executable, "-m", "web", "serve"], env)
        wait_http(proc, f"http://127.0.0.1:{port}/healthz", 30, f"web {name}")
        proc.url = f"http://127.0.0.1:{port}"
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


class EventLog:
    """Collects every Celery event from the cluster in a background thread."""

    def __init__(self, settings: Settings) -> None:
        from tasks.app import make_celery

        self.app = make_celery(settings)
        self.events: list[dict] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> EventLog:
        self._thread.start()
        assert self._ready.wait(10), "event receiver did not start"
        # "Consuming" can come before the broker really delivers to us (kombu
        # subscribes on the first poll on Redis): wait until a probe arrives.
        import uuid

        probe = f"probe-{uuid.uuid4()}"
        deadline = time.monotonic() + 15
        while not self.for_task(probe):
            assert time.monotonic() < deadline, "event receiver never got its probe"
            with self.app.events.default_dispatcher(hostname="probe@test") as dispatcher:
                dispatcher.send("task-probe", uuid=probe)
            wait_until = time.monotonic() + 0.3
            while time.monotonic() < wait_until and not self.for_task(probe):
                time.sleep(0.01)
        return self

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._recv = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            consuming = self._recv.on_consume_ready

            def ready(*args, **kwargs) -> None:  # subscribed: nothing is missed from here
                consuming(*args, **kwargs)
                self._ready.set()
            self._recv.on_consume_ready = ready
            self._recv.capture(limit=None, timeout=None, wakeup=False)

    def for_task(self, task_id: str) -> list[dict]:
        return [e for e in list(self.events) if e.get("uuid") == task_id]

    def job_sequence(self, task_id: str, timeout: float = 30) -> list[str]:
        """Event types of a finished job in arrival order, ``task-sent`` checked and left out.

        ``task-sent`` comes from the publisher's own connection, so it may
        arrive after the worker's first events; it must come exactly once.
        """
        from tasks import events

        seq = wait_for(lambda: (e := self.for_task(task_id)) and
                       {events.TASK_SENT, events.TASK_SUCCEEDED} <= {x["type"] for x in e} and e,
                       timeout, what=f"the events of {task_id}")
        types = [e["type"] for e in seq]
        assert types.count(events.TASK_SENT) == 1, types
        return [t for t in types if t != events.TASK_SENT]

    def stop(self) -> None:
        self._recv.should_stop = True
        self._thread.join(5)


class Watcher:
    """A real python-socketio client over websocket that records what it receives."""

    ENDINGS = ("task_completed", "task_cancelled", "task_error")

    def __init__(self, url: str, token: str | None = None, **connect_kwargs) -> None:
        import socketio

        self.url = url
        self.token = token
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.2,
                                   reconnection_delay_max=1)
        self.received: list[tuple[float, str, object]] = []
        self._lock = threading.Lock()
        self.sio.on("*", self._record)
        self.connect_kwargs = connect_kwargs
        # python-engineio hands each message to a thread of its own, so two events sent
        # 1 ms apart could be recorded in either order; record them in arrival order.
        eio = self.sio.eio
        trigger = eio._trigger_event

        def in_arrival_order(event, *args, run_async=False, **kwargs):
            return trigger(event, *args, run_async=run_async and event != "message", **kwargs)
        eio._trigger_event = in_arrival_order

    def _record(self, event: str, data: object = None) -> None:
        with self._lock:
            self.received.append((time.time(), event, data))

    def connect(self) -> Watcher:
        auth = {"token": self.token} if self.token is not None else None
        self.sio.connect(self.url, auth=auth, transports=["websocket"], wait_timeout=10,
                         **self.connect_kwargs)
        return self

    def call(self, event: str, data: object = None, timeout: float = 10):
        return self.sio.call(event, data, timeout=timeout)

    def events(self, task_id: str | None = None, names: tuple[str, ...] | None = None) -> list:
        with self._lock:
            items = list(self.received)
        out = []
        for _t, name, data in items:
            if names and name not in names:
                continue
            if task_id and not (isinstance(data, dict) and data.get("task_id") == task_id):
                continue
            out.append((name, data))
        return out

    def endings(self, task_id: str) -> list:
        return self.events(task_id, self.ENDINGS)

    def wait_ending(self, task_id: str, timeout: float = 60):
        return wait_for(lambda: self.endings(task_id), timeout, what=f"ending of {task_id}")

    def wait_progress(self, task_id: str, at_least: int, timeout: float = 60) -> None:
        """Until an event of ``task_id`` says ``at_least`` of its images are done."""
        wait_for(lambda: any(d.get("current", 0) >= at_least for _, d in self.events(task_id)),
                 timeout, what=f"{at_least} images of {task_id}")

    def close(self) -> None:
        try:
            self.sio.disconnect()
        except Exception:  # noqa: BLE001
            pass


class Stack:
    """A private Skald (Redis, workers, bridges, web) for tests that break things."""

    def __init__(self, base: Path, redis_args: list[str] | None = None, **overrides) -> None:
        from devstack import RedisProcess, free_port
        from settings import load_settings

        self.redis = RedisProcess()
        self.redis_args = redis_args or []
        self._start_redis()
        self.settings = load_settings(env={}).with_overrides(
            redis_url=self.redis.url, broker_url=self.redis.url,
            database_url=f"sqlite:///{base / 'skald.db'}", upload_dir=base / "uploads",
            var_dir=base / "var", secret_key="fault-secret", web_async_mode="threading",
            uploads_per_minute=1000, reconcile_seconds=2.0,
            **{"captioner": "basic", **overrides})  # tests that need `local` ask for it
        self.env = worker_env(self.settings)
        self.env["LEADER_TTL_SECONDS"] = str(self.settings.leader_ttl_seconds)
        self.env["VISIBILITY_TIMEOUT"] = str(self.settings.visibility_timeout)
        self.procs = ProcessSet()
        self.port = free_port()
        self.web: Proc | None = None

    def _start_redis(self) -> None:
        import subprocess as sp

        r = self.redis
        r.proc = sp.Popen([r.binary, "--port", str(r.port), "--bind", "127.0.0.1", "--dir", r.dir,
                           "--save", "", "--appendonly", "no", *self.redis_args],
                          stdout=sp.DEVNULL, stderr=sp.DEVNULL)
        from devstack import redis_answers
        wait_for(lambda: redis_answers(r.url, 0.2), 10, what="redis")

    def restart_redis(self, down_for: float = 1.0) -> None:
        self.redis.stop()
        time.sleep(down_for)
        self._start_redis()

    def start(self, workers: int = 1, bridges: int = 1) -> Stack:
        for i in range(workers):
            self.procs.start_worker(f"fw{i}", self.env, self.settings, concurrency=1)
        for i in range(bridges):
            self.start_bridge(f"fb{i}")
        self.web = self.procs.start_web("fweb", self.env, self.port)
        return self

    def start_bridge(self, name: str) -> Proc:
        proc = self.procs.start(name, [sys.executable, "-m", "bridge"], self.env)
        wait_for(lambda: "event stream connected" in proc.log() or "bridge standby" in proc.log()
                 or not proc.alive(), 30, what=f"bridge {name}")
        return proc

    def user(self, name: str) -> dict:
        from tasks.db import session_scope
        from web.auth import create_user

        with session_scope(self.settings.database_url) as db:
            _, token = create_user(db, name)
        return {"name": name, "token": token, "headers": {"Authorization": f"Bearer {token}"}}

    def submit(self, user: dict, paths) -> str:
        return submit_job(self.web.url, user, paths)["task_id"]

    def close(self) -> None:
        self.procs.stop_all()
        self.redis.stop()
        from tasks.db import dispose_all
        dispose_all()
