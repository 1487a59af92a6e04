"""``REDIS_URL`` (and ``BROKER_URL``) translated, in this one place, into each consumer's form.

One setting names Redis for every process; redis-py, kombu, Celery's result
backend and python-socketio each spell a Sentinel or TLS deployment their own
way. :func:`parse` reads the one form Skald documents, and the functions below
write what each consumer wants:

============================ ======================================================
``REDIS_URL``                 meaning
============================ ======================================================
``redis://[u:pw@]h:p/DB``     one Redis over TCP (password: the userinfo)
``rediss://...``              the same over TLS; query ``ssl_cert_reqs`` (required,
                              optional, none; default required), ``ssl_ca_certs``,
                              ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``
``redis+sentinel://[u:pw@]h1:p,h2:p/DB/MASTER``
                              Redis Sentinel: the sentinels, the database, the master's
                              name. The userinfo authenticates to the data nodes;
                              ``?sentinel_password=`` (and ``sentinel_username=``) to
                              the sentinels (unset: they need none)
``rediss+sentinel://...``     the same with TLS to the sentinels and the data nodes
                              (the TLS query parameters as above)
``unix:///path?db=N``         a Unix socket (redis-py only; not a broker)
============================ ======================================================

Consumers: :func:`client` (redis-py: bridge store, lease, command stream, event
reader, web reads, cancel flags, CLI), :func:`kombu_url` / :func:`kombu_options`
(the Celery broker, and so the task events), :func:`backend_url` /
:func:`backend_options` (Celery's result backend), :func:`socketio_url` (what
python-socketio's ``RedisManager`` accepts; web/messagequeue.py connects with
:func:`client` itself). Every client follows a failover by itself: a redis-py
connection asks the sentinels for the master again on each reconnect, retried
with capped exponential backoff (:data:`BACKOFF_BASE` doubling to
:data:`BACKOFF_CAP`). Pure parsing apart from :func:`client`; nothing at import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DIRECT_SCHEMES = ("redis", "rediss")
SSL_KEYS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
SENTINEL_PORT = 26379
REDIS_PORT = 6379

SOCKET_TIMEOUT = 5.0          # s a command may wait for its reply (a lost master is noticed)
CONNECT_TIMEOUT = 3.0         # s a TCP (or TLS) connect may take; an unreachable host fails fast
BACKOFF_BASE = 0.2            # s before the first retry of a failed command (doubling)
BACKOFF_CAP = 2.0             # s between retries at most
# Retries of one command (and, nested inside each, of its connect: redis-py retries both
# with the same policy): a few seconds in all. Every caller keeps trying in its own loop
# (the bridge's threads, the web's 503, a job's cancel check), so nothing waits on one
# command for a whole failover.
RETRIES = 3
MAX_CONNECTIONS = 10_000       # per client's pool: redis-py 8 caps a pool at 100 and then fails
                              # ("Too many connections"), which a gevent web process with a few
                              # hundred watchers connecting at once reaches; Redis's own
                              # maxclients (10 000 by default) is the real bound
DEAD_PEER_SECONDS = 5         # a peer gone silent (its host cut off: no RST) is given up after ~this


class RedisUrlError(ValueError):
    """A Redis URL Skald cannot use (the message says which part and why)."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names, independent of any client library's spelling."""

    kind: str                              # "direct", "sentinel" or "unix"
    hosts: tuple[tuple[str, int], ...]     # the server, or the sentinels
    db: int = 0
    master: str | None = None              # Sentinel: the monitored master's name
    username: str | None = None            # data nodes' credentials
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    ssl: dict[str, Any] = field(default_factory=dict)  # redis-py's ssl_* keyword arguments
    path: str | None = None                # unix socket

    @property
    def sentinel(self) -> bool:
        return self.kind == "sentinel"


def is_redis(url: str | None) -> bool:
    """Whether ``url`` names Redis in any form above (else: e.g. an ``amqp://`` broker)."""
    return bool(url) and urlsplit(url).scheme.lower() in (*SENTINEL_SCHEMES, *DIRECT_SCHEMES, "unix")


def _ssl_options(query: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    if reqs not in ("required", "optional", "none"):
        raise RedisUrlError(f"ssl_cert_reqs must be required, optional or none, got {reqs!r}")
    out["ssl_cert_reqs"] = reqs
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if query.get(key):
            out[key] = query[key]
    if "ssl_check_hostname" in query:
        out["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in ("1", "true", "yes", "on")
    elif reqs == "none":
        out["ssl_check_hostname"] = False
    return out


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    if not host:
        raise RedisUrlError(f"a host is missing in {text!r}")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise RedisUrlError(f"port {port!r} is not a number") from None


def _db(text: str) -> int:
    try:
        db = int(text or 0)
    except ValueError:
        raise RedisUrlError(f"the database must be a number, got {text!r}") from None
    if db < 0:
        raise RedisUrlError(f"the database must be 0 or more, got {db}")
    return db


def parse(url: str) -> RedisTarget:
    """The :class:`RedisTarget` of ``url``; :class:`RedisUrlError` when it is not usable."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query))
    netloc = parts.netloc
    userinfo, _, hostinfo = netloc.rpartition("@")
    user, _, pw = userinfo.partition(":")
    username, password = unquote(user) or None, unquote(pw) or None
    if scheme == "unix":
        return RedisTarget("unix", (), db=_db(query.get("db", "0")), username=username,
                           password=password, path=parts.path)
    if scheme in DIRECT_SCHEMES:
        host = _host_port(hostinfo or "127.0.0.1", REDIS_PORT)
        tls = scheme == "rediss"
        return RedisTarget("direct", (host,), db=_db(parts.path.strip("/") or query.get("db", "0")),
                           username=username, password=password, tls=tls,
                           ssl=_ssl_options(query) if tls else {})
    if scheme in SENTINEL_SCHEMES:
        hosts = tuple(_host_port(h, SENTINEL_PORT) for h in hostinfo.split(",") if h.strip())
        if not hosts:
            raise RedisUrlError("a Sentinel URL needs at least one sentinel host:port")
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) != 2:
            raise RedisUrlError("a Sentinel URL ends in /DB/MASTER_NAME "
                                "(e.g. redis+sentinel://h1:26379,h2:26379/0/mymaster)")
        tls = scheme == "rediss+sentinel"
        return RedisTarget("sentinel", hosts, db=_db(segments[0]), master=unquote(segments[1]),
                           username=username, password=password,
                           sentinel_username=query.get("sentinel_username") or None,
                           sentinel_password=query.get("sentinel_password") or None,
                           tls=tls, ssl=_ssl_options(query) if tls else {})
    raise RedisUrlError(f"unsupported Redis URL scheme {parts.scheme!r} (redis, rediss, "
                        "redis+sentinel, rediss+sentinel, unix)")


# -- redis-py -------------------------------------------------------------------------------------
def dead_peer_options() -> dict[int, int]:
    """TCP options (Linux; the ones the platform lacks are left out) that notice a silent peer.

    A Redis host that is cut off sends no RST: a connection waiting for a reply (a
    worker's BRPOP, a pub/sub listener) would wait for the kernel's two-hour keepalive,
    and unacknowledged writes are retried for ~15 minutes. Keepalive probes after 2 s
    idle, 1 s apart, 3 of them, and ``TCP_USER_TIMEOUT`` on unacknowledged data end such a
    connection after about :data:`DEAD_PEER_SECONDS`, so the client reconnects (through
    the sentinels: to the new master). Found on the several-hosts tier (tests/hosts/).
    """
    import socket

    wanted = (("TCP_KEEPIDLE", 2), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3),
              ("TCP_USER_TIMEOUT", DEAD_PEER_SECONDS * 1000))
    return {getattr(socket, name): value for name, value in wanted if hasattr(socket, name)}


def follow_failover_on_reconnect() -> None:
    """Make redis-py's Sentinel connections ask the sentinels again on every reconnect.

    redis-py 8's ``SentinelManagedConnection`` asks the sentinels only in
    ``connect()``; a command on a connection that was dropped reconnects through
    ``send_packed_command`` -> ``connect_check_health`` to the address it had, the old
    master, and retries it there. A killed master refuses at once and the next command
    finds the new one; a master whose host is cut off makes every retry wait out the
    connect timeout, and every process stalls for minutes (seen on the several-hosts
    tier, tests/hosts/). Patched once per process, for redis-py, kombu and Celery alike
    (all three use this class); idempotent.
    """
    from redis.sentinel import SentinelManagedConnection

    if getattr(SentinelManagedConnection, "_skald_follows_failover", False):
        return
    send = SentinelManagedConnection.send_packed_command

    def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
        if not self._sock:
            self.connect()  # through the sentinels: the master as it is now
        return send(self, command, check_health)

    SentinelManagedConnection.send_packed_command = send_packed_command
    SentinelManagedConnection._skald_follows_failover = True


def client_kwargs(target: RedisTarget, **overrides: Any) -> dict[str, Any]:
    """redis-py keyword arguments for the data nodes: timeouts, retry with capped backoff, TLS."""
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry

    kwargs: dict[str, Any] = {
        "db": target.db, "username": target.username, "password": target.password,
        "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True, "socket_keepalive_options": dead_peer_options(),
        "health_check_interval": 10, "max_connections": MAX_CONNECTIONS,
        "retry": Retry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, OSError],
    }
    kwargs.update(overrides)
    return kwargs


def sentinel_kwargs(target: RedisTarget) -> dict[str, Any]:
    """Keyword arguments of the connections to the sentinels themselves: short timeouts and
    no retries, so a sentinel that is away costs one timeout before the next one is asked."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries on a sentinel: redis-py 8 retries every connection 3 times with backoff
    # by default, so a sentinel whose host is cut off held each master lookup for ~30 s
    # before the next sentinel was asked (seen on the several-hosts tier, tests/hosts/).
    out: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0,
                           "retry": Retry(NoBackoff(), 0)}
    if target.sentinel_username:
        out["username"] = target.sentinel_username
    if target.sentinel_password:
        out["password"] = target.sentinel_password
    if target.tls:
        out.update(ssl=True, **target.ssl)
    return out


def client(url: str, **overrides: Any):
    """A redis-py client for ``url`` that follows a Sentinel failover by itself.

    ``overrides``: redis-py keyword arguments (e.g. ``socket_timeout``) over
    :func:`client_kwargs`'s defaults. A Sentinel client asks the sentinels where the
    master is on every new connection, so a retried command reaches the new one.
    """
    import redis
    from redis.sentinel import Sentinel

    target = parse(url)
    kwargs = client_kwargs(target, **overrides)
    if target.kind == "unix":
        kwargs.pop("socket_connect_timeout", None)
        kwargs.pop("socket_keepalive", None)
        kwargs.pop("socket_keepalive_options", None)
        return redis.Redis(unix_socket_path=target.path, **kwargs)
    if target.sentinel:
        follow_failover_on_reconnect()
        if target.tls:
            kwargs.update(ssl=True, **target.ssl)
        manager = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs(target))
        return manager.master_for(target.master, **kwargs)
    host, port = target.hosts[0]
    if target.tls:
        kwargs.update(ssl=True, **target.ssl)
    return redis.Redis(host=host, port=port, **kwargs)


# -- kombu (the Celery broker) ---------------------------------------------------------------------
def _userinfo(target: RedisTarget) -> str:
    if not (target.username or target.password):
        return ""
    return f"{quote(target.username or '', safe='')}:{quote(target.password or '', safe='')}@"


def _celery_ssl(target: RedisTarget) -> dict[str, Any] | None:
    """``broker_use_ssl`` / ``redis_backend_use_ssl``: ssl module constants, as both expect."""
    if not target.tls:
        return None
    import ssl

    reqs = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
    out = {k: v for k, v in target.ssl.items() if k != "ssl_check_hostname"}
    out["ssl_cert_reqs"] = reqs[target.ssl.get("ssl_cert_reqs", "required")]
    if "ssl_check_hostname" in target.ssl:
        out["ssl_check_hostname"] = target.ssl["ssl_check_hostname"]
    return out


def _sentinel_chain(target: RedisTarget) -> str:
    """``sentinel://u:pw@h1:p/DB;sentinel://u:pw@h2:p/DB``: kombu's and Celery's Sentinel form."""
    auth = _userinfo(target)
    return ";".join(f"sentinel://{auth}{h}:{p}/{target.db}" for h, p in target.hosts)


def kombu_url(url: str) -> str:
    """The broker URL kombu accepts (a non-Redis URL, e.g. ``amqp://``, as given)."""
    if not is_redis(url):
        return url
    target = parse(url)
    if target.sentinel:
        return _sentinel_chain(target)
    if target.kind == "unix":
        raise RedisUrlError("a Unix socket cannot be the Celery broker here; use redis://")
    (host, port), = target.hosts
    scheme = "rediss" if target.tls else "redis"
    return f"{scheme}://{_userinfo(target)}{host}:{port}/{target.db}"


def kombu_options(url: str) -> dict[str, Any]:
    """``broker_transport_options`` additions (Sentinel: the master's name, the sentinels'
    credentials and timeouts) and ``broker_use_ssl``: ``{"transport_options", "use_ssl"}``."""
    if not is_redis(url):
        return {"transport_options": {}, "use_ssl": None}
    target = parse(url)
    # kombu waits for a BRPOP reply with no timeout: only TCP notices a silent master.
    options: dict[str, Any] = {"socket_keepalive": True, "socket_keepalive_options": dead_peer_options()}
    if target.sentinel:
        follow_failover_on_reconnect()
        options.update(master_name=target.master, sentinel_kwargs=sentinel_kwargs(target))
    return {"transport_options": options, "use_ssl": _celery_ssl(target)}


# -- Celery's result backend ---------------------------------------------------------------------
def backend_url(url: str) -> str:
    """The result backend URL Celery accepts (``sentinel://...;sentinel://...`` for Sentinel)."""
    target = parse(url)
    if target.sentinel:
        return _sentinel_chain(target)
    return kombu_url(url)


def backend_options(url: str) -> dict[str, Any]:
    """``result_backend_transport_options`` additions and ``redis_backend_use_ssl``."""
    target = parse(url)
    options: dict[str, Any] = {}
    if target.sentinel:
        # Celery passes no timeouts to the sentinels unless told: a dead sentinel host
        # would hang a result read for the kernel's TCP timeout.
        follow_failover_on_reconnect()
        options = {"master_name": target.master, "sentinel_kwargs": sentinel_kwargs(target)}
    return {"transport_options": options, "use_ssl": _celery_ssl(target)}


# -- python-socketio -----------------------------------------------------------------------------
def socketio_url(url: str) -> str:
    """The URL python-socketio's ``RedisManager`` accepts for ``url``: it knows
    ``redis://``, ``rediss://`` and ``redis+sentinel://[u:pw@]h:p,h:p/DB/MASTER``
    (no Sentinel credentials or TLS: web/messagequeue.py connects with :func:`client`)."""
    target = parse(url)
    if target.sentinel:
        hosts = ",".join(f"{h}:{p}" for h, p in target.hosts)
        return f"redis+sentinel://{_userinfo(target)}{hosts}/{target.db}/{quote(target.master or '')}"
    return url


def redacted(url: str) -> str:
    """``url`` with every password replaced by ``***`` (for logs)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hosts}"
    query = "&".join(f"{k}=***" if "password" in k else f"{k}={v}"
                     for k, v in parse_qsl(parts.query))
    return parts._replace(netloc=netloc, query=query).geturl()
