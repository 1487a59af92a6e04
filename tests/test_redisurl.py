"""REDIS_URL in every form, translated for each consumer (redisurl.py); no Redis needed."""
from __future__ import annotations

import ssl

import pytest
from redis.sentinel import SentinelConnectionPool

import redisurl
from celeryconfig import for_settings
from settings import load_settings
from tasks import wire

SENTINEL = "redis+sentinel://:s3cr%40t@h1:26379,h2:26380,10.0.0.3/2/mymaster"
SENTINEL_TLS = ("rediss+sentinel://app:pw@h1:26379,h2:26379/0/skald?sentinel_password=spw"
                "&ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required")


def test_direct_forms():
    t = redisurl.parse("redis://127.0.0.1:6380/4")
    assert (t.kind, t.hosts, t.db, t.password, t.tls) == ("direct", (("127.0.0.1", 6380),), 4, None, False)
    t = redisurl.parse("redis://:p%3Aw@h")
    assert (t.hosts, t.db, t.password) == ((("h", 6379),), 0, "p:w")
    t = redisurl.parse("rediss://u:pw@h:6390/1?ssl_cert_reqs=none")
    assert t.tls and t.username == "u" and t.ssl == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}
    t = redisurl.parse("rediss://h:1/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c&ssl_keyfile=/k")
    assert t.ssl == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem",
                     "ssl_certfile": "/c", "ssl_keyfile": "/k"}
    assert redisurl.parse("redis://[::1]:7000/0").hosts == (("::1", 7000),)
    assert redisurl.parse("unix:///run/redis.sock?db=3").path == "/run/redis.sock"


def test_sentinel_forms():
    t = redisurl.parse(SENTINEL)
    assert t.sentinel and t.master == "mymaster" and t.db == 2 and t.password == "s3cr@t"
    assert t.hosts == (("h1", 26379), ("h2", 26380), ("10.0.0.3", 26379))
    assert not t.tls and t.sentinel_password is None
    t = redisurl.parse(SENTINEL_TLS)
    assert t.tls and t.sentinel_password == "spw" and t.username == "app"
    assert t.ssl["ssl_ca_certs"] == "/etc/ca.pem"
    kw = redisurl.sentinel_kwargs(t)
    assert kw.pop("retry").get_retries() == 0
    assert kw == {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "password": "spw", "ssl": True,
                  "ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"}


@pytest.mark.parametrize("bad", [
    "redis+sentinel://h1:26379/0",            # no master name
    "redis+sentinel:///0/m",                  # no sentinel
    "redis+sentinel://h1:x/0/m",              # port not a number
    "redis://h/notadb",
    "rediss://h/0?ssl_cert_reqs=maybe",
    "memcached://h",
])
def test_bad_urls_are_refused_with_a_reason(bad):
    with pytest.raises(redisurl.RedisUrlError):
        redisurl.parse(bad)


def test_kombu_and_backend_forms():
    assert redisurl.kombu_url(SENTINEL) == ("sentinel://:s3cr%40t@h1:26379/2;sentinel://:s3cr%40t@h2:26380/2;"
                                            "sentinel://:s3cr%40t@10.0.0.3:26379/2")
    assert redisurl.backend_url(SENTINEL) == redisurl.kombu_url(SENTINEL)
    opts = redisurl.kombu_options(SENTINEL)
    assert opts["transport_options"]["master_name"] == "mymaster" and opts["use_ssl"] is None
    assert opts["transport_options"]["sentinel_kwargs"]["socket_connect_timeout"] == 1.0
    assert redisurl.kombu_url("amqp://guest@h//") == "amqp://guest@h//"
    assert redisurl.kombu_options("amqp://guest@h//") == {"transport_options": {}, "use_ssl": None}
    assert redisurl.kombu_url("rediss://u:pw@h:6390/1?ssl_cert_reqs=none") == "rediss://u:pw@h:6390/1"
    tls = redisurl.backend_options(SENTINEL_TLS)
    assert tls["use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.pem"}
    assert tls["transport_options"]["sentinel_kwargs"]["password"] == "spw"


def test_socketio_form():
    assert redisurl.socketio_url(SENTINEL) == \
        "redis+sentinel://:s3cr%40t@h1:26379,h2:26380,10.0.0.3:26379/2/mymaster"
    assert redisurl.socketio_url("redis://h:1/0") == "redis://h:1/0"
    from socketio.redis_manager import parse_redis_sentinel_url

    sentinels, name, kwargs = parse_redis_sentinel_url(redisurl.socketio_url(SENTINEL))
    assert name == "mymaster" and kwargs["db"] == 2 and len(sentinels) == 3


def test_redis_py_clients():
    c = redisurl.client(SENTINEL_TLS)
    pool = c.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "skald"
    kw = pool.connection_kwargs
    assert kw["password"] == "pw" and kw["username"] == "app" and kw["db"] == 0
    assert kw["socket_timeout"] == redisurl.SOCKET_TIMEOUT
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] == "spw"
    retry = kw["retry"]
    assert retry.get_retries() == redisurl.RETRIES
    direct = redisurl.client("rediss://:pw@h:6390/3?ssl_cert_reqs=none", socket_timeout=1)
    dk = direct.connection_pool.connection_kwargs
    assert (dk["host"], dk["port"], dk["db"], dk["password"], dk["socket_timeout"]) == ("h", 6390, 3, "pw", 1)
    assert direct.connection_pool.connection_class.__name__ == "SSLConnection"


def test_celery_config_follows_the_url():
    conf = for_settings(load_settings(env={"REDIS_URL": SENTINEL}))
    assert conf["broker_url"].startswith("sentinel://") and ";" in conf["broker_url"]
    assert conf["result_backend"] == conf["broker_url"]
    assert conf["broker_transport_options"]["master_name"] == "mymaster"
    assert conf["broker_transport_options"]["visibility_timeout"] == 3600
    assert conf["result_backend_transport_options"]["master_name"] == "mymaster"
    assert conf["result_backend_transport_options"]["retry_policy"] == {"timeout": 5.0}
    plain = for_settings(load_settings(env={}))
    assert plain["broker_url"] == "redis://127.0.0.1:6379/0" and "broker_use_ssl" not in plain
    tls = for_settings(load_settings(env={"REDIS_URL": "rediss://:pw@h:6390/0?ssl_ca_certs=/ca"}))
    assert tls["broker_use_ssl"]["ssl_ca_certs"] == "/ca"
    assert tls["redis_backend_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_celery_builds_sentinel_broker_and_backend():
    """Celery's and kombu's own parsers accept what we hand them (no connection made)."""
    from tasks.app import make_celery

    app = make_celery(load_settings(env={"REDIS_URL": SENTINEL}))
    backend = app.backend
    assert type(backend).__name__ == "SentinelBackend"
    assert [h["host"] for h in backend.connparams["hosts"]] == ["h1", "h2", "10.0.0.3"]
    assert backend.connparams["db"] == 2 and backend.connparams["password"] == "s3cr@t"
    conn = app.connection_for_write()
    assert conn.transport_cls == "sentinel" and len(conn.alt) == 3
    assert conn.transport_options["master_name"] == "mymaster"


def test_event_channels_under_sentinel():
    assert wire.is_redis(SENTINEL) and wire.is_redis(SENTINEL_TLS)
    assert wire.pattern(SENTINEL) == "/2.celeryev/*"


def test_redacted():
    assert "s3cr" not in redisurl.redacted(SENTINEL)
    assert "spw" not in redisurl.redacted(SENTINEL_TLS) and "pw@" not in redisurl.redacted(SENTINEL_TLS)
