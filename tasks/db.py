"""Engines and sessions (one engine per database URL per process), and the schema.

The first use of a database in a process brings its schema up to date with
Alembic (``migrations/``). Every process may do so at once: the upgrade runs
under a lock (a file lock beside a SQLite database, an advisory lock on
PostgreSQL), so the second one finds the work done. A database made by
``create_all`` before migrations existed is recognised and stamped first.
"""
from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
FIRST_REVISION = "0001"  # what create_all made before migrations existed
PG_LOCK_KEY = 0x5CA1D  # advisory lock id of Skald's schema upgrades

_lock = threading.Lock()
_engines: dict[str, tuple[Engine, sessionmaker[Session]]] = {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the web process read while a worker writes; busy_timeout waits
    # for a lock instead of failing at once.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _build(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    migrate(engine)
    return engine


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest revision (safe to run from many processes at once)."""
    with _schema_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        if _unversioned_legacy(conn):
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "head")


def _unversioned_legacy(conn: Connection) -> bool:
    return (MigrationContext.configure(conn).get_current_revision() is None
            and inspect(conn).has_table("users"))


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """A file lock beside a SQLite database file (other databases lock in SQL)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    with open(f"{url.database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sessions(url: str) -> sessionmaker[Session]:
    """The session factory for ``url``, creating the engine and tables once."""
    with _lock:
        entry = _engines.get(url)
        if entry is None:
            engine = _build(url)
            entry = (engine, sessionmaker(engine, expire_on_commit=False))
            _engines[url] = entry
        return entry[1]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = sessions(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_all() -> None:
    """Close every pooled connection (after fork, and in tests)."""
    with _lock:
        for engine, _ in _engines.values():
            engine.dispose()
        _engines.clear()
