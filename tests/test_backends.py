"""The same whole job on the other supported engines: RabbitMQ as broker, PostgreSQL as database.

Each test runs when the service answers on loopback and is skipped otherwise.
"""
from __future__ import annotations

import io
import socket
import uuid

import pytest

from tasks import events
from tests.support import EventLog, ProcessSet, wait_for, worker_env

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def png(colour=(200, 10, 10), size=(640, 480)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def run_job(app, user_headers, n: int) -> str:
    client = app.test_client()
    data = {"images": [(io.BytesIO(png((i * 30 % 255, 90, 160))), f"p{i}.png") for i in range(n)]}
    resp = client.post("/api/jobs", headers=user_headers, data=data, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["task_id"]


def make_user(database_url: str, name: str) -> dict:
    from tasks.db import session_scope
    from web.auth import create_user

    with session_scope(database_url) as db:
        _, token = create_user(db, name)
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.skipif(not answers(5672), reason="no RabbitMQ on 127.0.0.1:5672")
def test_whole_job_and_revoke_on_rabbitmq(settings, tmp_path):
    from web import create_app

    amqp = settings.with_overrides(broker_url=AMQP_URL,
                                   database_url=f"sqlite:///{tmp_path / 'amqp.db'}")
    env = worker_env(amqp)
    procs = ProcessSet()
    log = None
    try:
        procs.start_worker(f"amqp-{uuid.uuid4().hex[:6]}", env, amqp, concurrency=1)
        log = EventLog(amqp).start()
        app = create_app(amqp)
        headers = make_user(amqp.database_url, "rabbit")
        task_id = run_job(app, headers, 3)
        assert log.job_sequence(task_id, timeout=60) == [
            events.TASK_RECEIVED, events.TASK_STARTED, *[events.TASK_PROGRESS] * 3,
            events.TASK_SUCCEEDED]
        # A revoke over amqp reaches the worker: a queued job is dropped unrun.
        from tasks.app import make_celery

        celery = make_celery(amqp)
        busy = run_job(app, headers, 30)
        queued = run_job(app, headers, 2)
        celery.control.revoke(queued)
        wait_for(lambda: any(e["type"] == events.TASK_REVOKED for e in log.for_task(queued)),
                 90, what="task-revoked over amqp")
        assert not any(e["type"] == events.TASK_PROGRESS for e in log.for_task(queued))
        wait_for(lambda: any(e["type"] == events.TASK_SUCCEEDED for e in log.for_task(busy)), 90,
                 what="busy job done")
    finally:
        if log:
            log.stop()
        procs.stop_all()


def _pg_database():
    psycopg = pytest.importorskip("psycopg")
    name = f"skald_test_{uuid.uuid4().hex[:8]}"
    try:
        conn = psycopg.connect(PG_ADMIN_URL, connect_timeout=2, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL does not accept connections: {exc}")
    conn.execute(f'CREATE DATABASE "{name}"')
    return conn, name


@pytest.mark.skipif(not answers(5432), reason="no PostgreSQL on 127.0.0.1:5432")
def test_whole_job_on_postgresql(settings):
    from tasks.db import dispose_all
    from web import create_app

    admin_conn, name = _pg_database()
    pg = settings.with_overrides(database_url=f"postgresql://postgres@127.0.0.1:5432/{name}")
    procs = ProcessSet()
    try:
        # Its own Redis database, so the session's SQLite worker never sees these jobs.
        pg = pg.with_overrides(redis_url=settings.redis_url.rsplit("/", 1)[0] + "/3",
                               broker_url=settings.redis_url.rsplit("/", 1)[0] + "/3")
        procs.start_worker(f"pg-{uuid.uuid4().hex[:6]}", worker_env(pg), pg, concurrency=1)
        app = create_app(pg)
        headers = make_user(pg.database_url, "elephant")
        task_id = run_job(app, headers, 3)
        client = app.test_client()
        wait_for(lambda: client.get(f"/api/jobs/{task_id}", headers=headers).get_json()["state"]
                 == "SUCCESS", 60, what="job done on postgresql")
        caps = client.get(f"/api/jobs/{task_id}/captions", headers=headers).get_json()["captions"]
        assert len(caps) == 3 and all(c["caption"] for c in caps)
    finally:
        procs.stop_all()
        dispose_all()
        admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin_conn.close()
