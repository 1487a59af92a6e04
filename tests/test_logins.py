"""Login as a denial of service: backoff per IP and per user name, hashing off the loop.

The backoff logic runs against a real Redis with a controlled clock (no sleeps);
the event-loop test runs a real ``python -m web serve`` (gevent) and shows that
other requests are served while logins hash, by counting answers, not timing them.
"""
from __future__ import annotations

import sqlite3
import threading

import pytest
import requests

from tests.support import csrf_token, wait_for
from web.loginlimit import LoginLimiter, Policy


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_policy_delays_double_up_to_the_cap():
    policy = Policy(free=3, cap=10, window=60)
    assert [policy.delay(n) for n in range(1, 9)] == [0, 0, 0, 1, 2, 4, 8, 10]
    assert policy.delay(10_000) == 10


@pytest.fixture()
def limiter(redis_proc):
    import redis

    client = redis.Redis.from_url(redis_proc.url)
    for key in client.scan_iter("skald:login:*"):
        client.delete(key)
    clock = Clock()
    return LoginLimiter(client, by_ip=Policy(free=4, cap=60, window=600),
                        by_name=Policy(free=2, cap=60, window=600), clock=clock), clock


def test_a_user_name_is_locked_with_backoff_then_released(limiter):
    lim, clock = limiter
    assert lim.retry_after("10.0.0.1", "alice") == 0
    assert lim.failed("10.0.0.1", "alice") == 0
    assert lim.failed("10.0.0.2", "alice") == 0   # another IP, the same name
    assert lim.failed("10.0.0.3", "Alice") == 1   # names are counted case-blind
    assert lim.retry_after("10.0.0.9", "alice") == pytest.approx(1)
    clock.now += 1
    assert lim.retry_after("10.0.0.9", "alice") == 0
    assert lim.failed("10.0.0.9", "alice") == 2
    assert lim.retry_after("10.0.0.1", "bob") == 0  # others are not affected
    lim.succeeded("10.0.0.9", "alice")
    assert lim.retry_after("10.0.0.4", "alice") == 0


def test_an_ip_is_locked_across_user_names(limiter):
    lim, clock = limiter
    for i in range(4):
        assert lim.failed("10.9.9.9", f"name{i}") == 0
    assert lim.failed("10.9.9.9", "name4") == 1
    assert lim.retry_after("10.9.9.9", "never-tried") == pytest.approx(1)
    assert lim.retry_after("10.9.9.8", "never-tried") == 0
    lim.succeeded("10.9.9.9", "name0")  # a success does not clear the IP
    assert lim.retry_after("10.9.9.9", "never-tried") > 0


def test_limits_hold_in_memory_while_redis_is_away():
    import redis

    from devstack import free_port

    clock = Clock()
    lim = LoginLimiter(redis.Redis(port=free_port(), socket_connect_timeout=0.2),
                       by_ip=Policy(free=10, cap=60, window=600), by_name=Policy(free=1, cap=60, window=600),
                       clock=clock)
    assert lim.failed("10.0.0.1", "carol") == 0
    assert lim.failed("10.0.0.1", "carol") == 1
    assert lim.retry_after("10.0.0.2", "carol") == pytest.approx(1)


@pytest.fixture(scope="module")
def strict_app(settings):
    from web import create_app

    app = create_app(settings.with_overrides(login_user_free=3, login_ip_free=6), message_queue=False)
    app.extensions["skald_login_limiter"].clock = Clock()
    return app


def client_from(app, ip: str):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip
    return client


def attempt(app, name: str, password: str, ip: str):
    client = client_from(app, ip)
    return client.post("/login", data={"username": name, "password": password,
                                       "csrf_token": csrf_token(client)})


def test_login_page_answers_429_after_repeated_failures(strict_app, users):
    victim = users("brute-victim", password="the-right-one")
    statuses = [attempt(strict_app, "brute-victim", f"guess-{i}", "10.1.1.1").status_code
                for i in range(4)]
    assert statuses == [401, 401, 401, 401]  # the 4th failure sets a lock
    locked = attempt(strict_app, "brute-victim", "the-right-one", "10.1.1.2")
    assert locked.status_code == 429  # even the right password: nothing is hashed while locked
    assert "Too many failed attempts" in locked.get_data(as_text=True)
    assert int(locked.headers["Retry-After"]) >= 1
    # The API keeps working, for the victim too; other users still log in.
    api = client_from(strict_app, "10.1.1.1")
    assert api.get("/api/jobs", headers=victim["headers"]).status_code == 200
    users("brute-bystander", password="bystander-pw")
    assert attempt(strict_app, "brute-bystander", "bystander-pw", "10.1.1.1").status_code == 302
    strict_app.extensions["skald_login_limiter"].clock.now += 3600  # the lock runs out
    assert attempt(strict_app, "brute-victim", "the-right-one", "10.1.1.2").status_code == 302


def test_login_page_limits_an_ip_trying_many_names(strict_app):
    statuses = [attempt(strict_app, f"spray-{i}", "password", "10.2.2.2").status_code for i in range(8)]
    assert statuses[:7] == [401] * 7 and statuses[7] == 429
    assert attempt(strict_app, "spray-x", "password", "10.2.2.3").status_code == 401


# -- the event loop while passwords hash (a real gevent web process) ---------------------------
SLOW_HASH = "pbkdf2:sha256:12000000$salt$" + "00" * 32  # ~2 s of CPU per check, by design here


@pytest.fixture(scope="module")
def gevent_web(procs, env):
    from devstack import free_port

    proc = procs.start_web("web-logins", env, free_port())
    yield proc
    proc.stop()


def test_other_requests_are_served_while_logins_hash(gevent_web, users, settings):
    users("slow-hash", password="unused")
    other = users("busy-bystander")
    path = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE users SET password_hash = ? WHERE name = 'slow-hash'", (SLOW_HASH,))
    url = gevent_web.url
    finished = threading.Event()

    def log_in() -> None:
        session = requests.Session()
        page = session.get(f"{url}/login").text
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        session.post(f"{url}/login", data={"username": "slow-hash", "password": "guess",
                                            "csrf_token": token}, timeout=120)
        finished.set()

    seen = gevent_web.log().count("login attempt for 'slow-hash'")
    logins = [threading.Thread(target=log_in, daemon=True) for _ in range(2)]
    for t in logins:
        t.start()
    wait_for(lambda: gevent_web.log().count("login attempt for 'slow-hash'") >= seen + 2, 30,
             what="the logins to start hashing")
    served = 0
    while not finished.is_set():
        resp = requests.get(f"{url}/api/jobs", headers=other["headers"], timeout=120)
        assert resp.status_code == 200
        if not finished.is_set():
            served += 1
    for t in logins:
        t.join(120)
    # With the hash on the event loop, nothing else is answered until it ends (served <= 1).
    assert served >= 5, f"only {served} requests were answered while 2 logins hashed"
    assert "Traceback" not in gevent_web.log()


def test_unknown_names_cost_a_hash_too(monkeypatch):
    from web import passwords

    calls = []
    real = passwords.off_loop
    monkeypatch.setattr(passwords, "off_loop", lambda fn, *a: calls.append(fn.__name__) or real(fn, *a))
    assert passwords.verify_password(None, "anything") is False
    # The dummy check goes through the same off-loop path as a real one.
    assert calls[-1] == "check_password_hash"
