"""Shared fixtures: a private Redis, test settings, a real worker, app and users.

Every session starts its own Redis on a free port (never the shared 6379) and
its own SQLite database, so runs cannot collide.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import RedisProcess, free_port
from settings import Settings, load_settings
from tests.support import CHROMIUM, CHROMIUM_ARGS, ProcessSet, make_image, worker_env

pytest_plugins = ("celery.contrib.pytest",)

@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc

@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("skald")

@pytest.fixture(scope="session")
def settings(redis_proc: RedisProcess, base_dir: Path) -> Settings:
    return load_settings(env={}).with_overrides(
        redis_url=redis_proc.url, broker_url=redis_proc.url,
        database_url=f"sqlite:///{base_dir / 'skald.db'}",
        upload_dir=base_dir / "uploads", var_dir=base_dir / "var",
        secret_key="test-secret", web_async_mode="threading",
        # The shared worker captions with basic (fast, no models); `local`, the default,
        # has workers of its own in tests/test_image_jobs.py.
        captioner="basic",
        uploads_per_minute=1000, socket_rate=1000.0, socket_burst=1000,
        login_ip_free=1000, login_user_free=100,
        cancel_grace_seconds=30.0, reconcile_seconds=2.0,
        # The session's SQL database is shared by apps on other Redis databases (e.g. the
        # isolated admin app on /3): the session bridge's sweeper would take their jobs for
        # lost ones. tests/test_sweeper.py and tests/test_sentinel.py sweep stacks of their own.
        sweep_after=24 * 3600.0)

@pytest.fixture(scope="session")
def env(settings: Settings) -> dict[str, str]:
    return worker_env(settings)

@pytest.fixture(scope="session")
def procs() -> Iterator[ProcessSet]:
    ps = ProcessSet()
    yield ps
    ps.stop_all()

@pytest.fixture(scope="session")
def worker(procs: ProcessSet, env: dict[str, str], settings: Settings):
    """A real Celery worker (the Procfile's command) on the test Redis."""
    return procs.start_worker("w1", env, settings)

@pytest.fixture(scope="session")
def bridge(procs: ProcessSet, env: dict[str, str]):
    """The real bridge process (``python -m bridge``)."""
    return procs.start_bridge("bridge", env)


@pytest.fixture(scope="session")
def web(procs: ProcessSet, env: dict[str, str]):
    """The real web process (``python -m web serve``, gevent) on a free port."""
    return procs.start_web("web", env, free_port())


@pytest.fixture(scope="session")
def stack(worker, bridge, web):
    """Worker, bridge and web running on the test Redis; yields the web URL."""
    return web.url


@pytest.fixture(scope="session")
def app(settings: Settings):
    from web import create_app

    return create_app(settings)

@pytest.fixture()
def client(app):
    return app.test_client()

@pytest.fixture(scope="session")
def users(app):
    """Factory: ``users("alice")`` -> (Principal-like dict with token)."""
    from tasks.db import session_scope
    from web.auth import create_user

    made: dict[str, dict] = {}

    def make(name: str, admin: bool = False, password: str = "pw-" + "x" * 8,
             role: str = "user") -> dict:
        if name not in made:
            with session_scope(app.extensions["skald"].settings.database_url) as db:
                user, token = create_user(db, name, password=password, admin=admin, role=role)
                made[name] = {"id": user.id, "name": name, "token": token,
                              "password": password, "admin": admin, "role": user.role,
                              "headers": {"Authorization": f"Bearer {token}"}}
        return made[name]
    return make

@pytest.fixture()
def images(tmp_path: Path):
    """Factory: ``images(3)`` -> list of PNG paths with different colours."""
    def make(n: int, size: tuple[int, int] = (64, 48)) -> list[Path]:
        return [make_image(tmp_path / f"img{i}.png", i, size) for i in range(n)]
    return make

os.environ.setdefault("SKALD_TESTING", "1")


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (its own browser download fails here)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
