"""Alembic's environment: run migrations on the connection ``tasks/db.py`` hands over,
or (the ``alembic`` command) on ``DATABASE_URL``."""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from tasks.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as conn:
        _migrate(conn)
        conn.commit()


def _migrate(connection) -> None:
    # SQLite alters tables by copying them ("batch" mode).
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run()
