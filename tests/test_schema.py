"""The schema comes from Alembic migrations: fresh, legacy and concurrent starts.

A database is upgraded by whichever process uses it first; several processes
starting at once on a fresh database must all come up (a second web process
once died with ``table ... already exists``).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from tasks.models import Base
from tests.support import ROOT
from tests.test_backends import _pg_database, answers

# The schema as ``create_all`` made it before migrations existed (revision 0001).
LEGACY_DDL = [
    "CREATE TABLE users (id INTEGER NOT NULL, name VARCHAR(64) NOT NULL, is_admin BOOLEAN NOT NULL,"
    " password_hash VARCHAR(255), token_hash VARCHAR(64), created_at FLOAT NOT NULL,"
    " PRIMARY KEY (id), UNIQUE (token_hash))",
    "CREATE UNIQUE INDEX ix_users_name ON users (name)",
    "CREATE TABLE jobs (id INTEGER NOT NULL, task_id VARCHAR(36) NOT NULL, owner_id INTEGER NOT NULL,"
    " state VARCHAR(16) NOT NULL, total INTEGER NOT NULL, done INTEGER NOT NULL,"
    " failed INTEGER NOT NULL, current_step VARCHAR(255) NOT NULL, error TEXT,"
    " created_at FLOAT NOT NULL, started_at FLOAT, finished_at FLOAT, updated_at FLOAT NOT NULL,"
    " PRIMARY KEY (id), FOREIGN KEY(owner_id) REFERENCES users (id))",
    "CREATE INDEX ix_jobs_owner_id ON jobs (owner_id)",
    "CREATE INDEX ix_jobs_created_at ON jobs (created_at)",
    "CREATE UNIQUE INDEX ix_jobs_task_id ON jobs (task_id)",
    "CREATE TABLE images (id INTEGER NOT NULL, job_id INTEGER NOT NULL, position INTEGER NOT NULL,"
    " name VARCHAR(255) NOT NULL, path VARCHAR(1024) NOT NULL, size INTEGER NOT NULL,"
    " PRIMARY KEY (id), UNIQUE (job_id, position), FOREIGN KEY(job_id) REFERENCES jobs (id))",
    "CREATE INDEX ix_images_job_id ON images (job_id)",
    "CREATE TABLE captions (id INTEGER NOT NULL, image_id INTEGER NOT NULL, text TEXT,"
    " captioner VARCHAR(32) NOT NULL, error TEXT, created_at FLOAT NOT NULL, PRIMARY KEY (id),"
    " UNIQUE (image_id), FOREIGN KEY(image_id) REFERENCES images (id))",
]


def _upgrade(url: str) -> None:
    from tasks.db import dispose_all, sessions

    sessions(url)
    dispose_all()


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from tasks.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def _drift(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_a_fresh_database_gets_the_models_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    _upgrade(url)
    assert _drift(url) == []
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head()
    engine.dispose()


def test_a_legacy_database_is_stamped_and_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        for ddl in LEGACY_DDL:
            conn.execute(text(ddl))
        conn.execute(text("INSERT INTO users (name, is_admin, created_at) VALUES ('boss', 1, 0), ('ann', 0, 0)"))
    engine.dispose()
    _upgrade(url)
    assert _drift(url) == []
    engine = create_engine(url)
    with engine.connect() as conn:
        roles = dict(conn.execute(text("SELECT name, role FROM users")).all())
        assert "is_admin" not in {c["name"] for c in inspect(conn).get_columns("users")}
    engine.dispose()
    assert roles == {"boss": "admin", "ann": "user"}


def _start_at_once(url: str, n: int) -> list[subprocess.CompletedProcess]:
    code = ("import sys; from tasks.db import sessions; sessions(sys.argv[1]); print('up')")
    procs = [subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    return [subprocess.CompletedProcess(p.args, p.wait(60), *p.communicate()) for p in procs]


@pytest.mark.slow
def test_processes_starting_at_once_on_a_fresh_sqlite_database_all_come_up(tmp_path: Path) -> None:
    for attempt in range(3):  # the race showed 1 time in 4 before the lock
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        results = _start_at_once(url, 4)
        assert all(r.returncode == 0 and r.stdout.strip() == "up" for r in results), \
            [r.stderr[-500:] for r in results]
        assert _drift(url) == []


@pytest.mark.slow
@pytest.mark.skipif(not answers(5432), reason="no PostgreSQL on 127.0.0.1:5432")
def test_processes_starting_at_once_on_a_fresh_postgresql_database_all_come_up() -> None:
    admin, name = _pg_database()
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        results = _start_at_once(url, 4)
        assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
        assert _drift(url) == []
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
