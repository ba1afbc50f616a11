"""Alembic environment of the node's database (run by :func:`node.store.migrate.ensure_schema`).

The node passes its own connection in ``config.attributes["connection"]``, already inside the transaction
that holds the migration lock, so that the check of the current revision, the upgrade and the version stamp
are one atomic step. From a shell (writing a new revision)::

    alembic -c node/store/migrations/alembic.ini -x url=sqlite:////tmp/draft.db revision --autogenerate -m "..."
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from node.store.schema import make_engine, metadata

config = context.config


def run(connection: Connection) -> None:
    """Migrate over ``connection`` (in its transaction when it has one)."""
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=True,  # SQLite cannot ALTER most things: autogenerate batch operations
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def url() -> str:
    """The database of a shell run: ``-x url=...`` or ``sqlalchemy.url`` of the .ini file."""
    value = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not value:
        raise SystemExit("give the database: alembic -x url=sqlite:////path/node.db ...")
    return value


if context.is_offline_mode():  # `alembic upgrade head --sql`: the DDL as a script, for a DBA to review
    context.configure(url=url(), target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run(config.attributes["connection"])
else:
    engine = make_engine(url())
    try:
        with engine.connect() as conn:
            run(conn)
            conn.commit()
    finally:
        engine.dispose()
