"""Redis over TLS with a password (``rediss://:pw@h:p/0?ssl_ca_certs=...``): a certificate made
here with the openssl CLI, a real ``redis-server --tls-port``, and the whole stack on it."""
from __future__ import annotations

import shutil
import subprocess
import time
from urllib.parse import quote

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import redisurl
from devstack import free_port, redis_server_binary
from tests.support import ProcessSet, Watcher, make_image, submit_job, wait_for, worker_env

PASSWORD = "tls pw/with:odd@chars"
NO_RETRY = {"retry": Retry(NoBackoff(), 0), "retry_on_error": []}  # a refusal is the answer


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("no openssl CLI to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    port = free_port()
    log = d / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([redis_server_binary(), "--port", "0", "--tls-port", str(port),
                                 "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
                                 "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                                 "--tls-auth-clients", "no", "--requirepass", PASSWORD,
                                 "--save", "", "--appendonly", "no", "--dir", str(d)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if "tls" in text.lower():
                pytest.skip(f"redis-server is not built with TLS: {text[-300:]}")
            raise AssertionError(text)
        try:
            if redisurl.client(url, socket_connect_timeout=0.3, **NO_RETRY).ping():
                break
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield {"url": url, "port": port, "cert": cert, "key": key}
    proc.terminate()
    proc.wait(5)


def test_tls_client_needs_the_password_and_the_ca(tls_redis):
    client = redisurl.client(tls_redis["url"])
    client.set("skald:tls", "ok")
    assert client.get("skald:tls") == b"ok"
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    wrong = tls_redis["url"].replace(quote(PASSWORD, safe=""), "nope")
    with pytest.raises(redis.AuthenticationError):
        redisurl.client(wrong, **NO_RETRY).ping()
    plain = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{tls_redis['port']}/0"
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        redisurl.client(plain, socket_timeout=1, **NO_RETRY).ping()
    untrusted = tls_redis["url"].split("?")[0]  # the system CAs do not know our certificate
    with pytest.raises(redis.ConnectionError):
        redisurl.client(untrusted, **NO_RETRY).ping()


@pytest.mark.slow
def test_whole_stack_over_tls(tls_redis, tmp_path):
    """Worker (kombu broker + Celery backend + events), bridge (raw event reader over the TLS
    socket) and web (message queue) all on ``rediss://`` with a password."""
    from settings import load_settings
    from tasks.db import dispose_all, session_scope
    from web.auth import create_user

    url = tls_redis["url"]
    settings = load_settings(env={}).with_overrides(
        redis_url=url, broker_url=url, database_url=f"sqlite:///{tmp_path / 'skald.db'}",
        upload_dir=tmp_path / "uploads", var_dir=tmp_path / "var", secret_key="tls-secret",
        web_async_mode="threading", captioner="basic", reconcile_seconds=2.0)
    env = worker_env(settings)
    procs = ProcessSet()
    try:
        procs.start_worker("tw0", env, settings, concurrency=1)
        procs.start_bridge("tb0", env)
        web = procs.start_web("tweb", env, free_port())
        with session_scope(settings.database_url) as db:
            _, token = create_user(db, "tess")
        user = {"token": token, "headers": {"Authorization": f"Bearer {token}"}}
        w = Watcher(web.url, token).connect()
        try:
            images = [make_image(tmp_path / f"t{i}.png", i) for i in range(2)]
            tid = submit_job(web.url, user, images)["task_id"]
            assert w.call("join_task", {"task_id": tid})["ok"]
            w.wait_ending(tid, 60)
            time.sleep(0.5)
            names = [n for n, _ in w.events(tid)]
            assert [n for n in names if n in Watcher.ENDINGS] == ["task_completed"], names
            assert any(n == "progress_update" for n in names), names
        finally:
            w.close()
        wait_for(lambda: redisurl.client(url).exists(f"celery-task-meta-{tid}"), 10,
                 what="the result over TLS")
    except AssertionError:
        print("\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in procs.procs))
        raise
    finally:
        procs.stop_all()
        dispose_all()


@pytest.mark.slow
def test_sentinel_over_tls_with_passwords_follows_a_failover(tls_redis, tmp_path):
    """``rediss+sentinel://``: sentinels and data nodes on TLS only, both password-protected;
    redis-py, kombu (the broker) and Celery's result backend reach the master, and again
    after it is killed."""
    from settings import load_settings
    from tasks.app import make_celery
    from tests.sentinel import SentinelCluster

    cluster = SentinelCluster(tmp_path / "redis", password="data pw", sentinel_password="sentinel-pw",
                              tls=(tls_redis["cert"], tls_redis["key"])).start()
    try:
        url = cluster.url
        assert url.startswith("rediss+sentinel://")
        client = redisurl.client(url)
        client.set("skald:tls", "1")
        app = make_celery(load_settings(env={}).with_overrides(redis_url=url, broker_url=url))
        app.send_task("skald.nothing", task_id="t-before", queue="tlsq")
        app.backend.store_result("t-before", {"ok": 1}, "SUCCESS")
        cluster.kill_master()
        assert client.get("skald:tls") == b"1"      # replicated, then read from the new master
        app.send_task("skald.nothing", task_id="t-after", queue="tlsq")
        app.backend.store_result("t-after", {"ok": 2}, "SUCCESS")
        assert app.backend.get_task_meta("t-after")["result"] == {"ok": 2}
        assert client.llen("tlsq") >= 1
    finally:
        cluster.stop()
