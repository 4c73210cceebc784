"""Alembic environment: TeachLab's SQLModel metadata is the target; batch mode (SQLite needs
it to alter tables; PostgreSQL alters them in place)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import teachlab.db.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from teachlab.db.store import Store

config = context.config
target_metadata = SQLModel.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        url = config.get_main_option("sqlalchemy.url") or ""
        engine = Store.at(url).engine()
        with engine.begin() as connection:
            _run(connection)
    else:
        _run(connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
