"""Schema migrations (Alembic), run by the node itself: no alembic.ini, no command to remember.

:func:`ensure_schema` brings a database to the newest revision this code knows (``head``):

- an empty database gets every revision from the baseline up;
- a database made before migrations existed (the tables of ``metadata.create_all``, no ``alembic_version``) is
  adopted by the baseline revision (each of its creates is ``IF NOT EXISTS``: the tables it has are kept, any an
  older node never created are added, the baseline is stamped), then upgraded;
- a database at ``head`` is left alone (one read of ``alembic_version``);
- a database at a revision this code does not know (written by a newer node) is used, with a WARNING, when every
  revision past this code's head was additive (the floor the upgrading node recorded, :mod:`node.store.compat`),
  and refused otherwise, with the database's revision, the floor and this code's head named.

Concurrency: the whole check-and-upgrade is one transaction holding the database's write lock: SQLite's
``BEGIN IMMEDIATE`` (every transaction of :func:`node.store.schema.make_engine` starts that way; DDL is
transactional in SQLite) and on PostgreSQL a transaction-scoped advisory lock. ``serve`` opens the store (and
so upgrades) before it starts its worker and receiver processes; when they, or ``dicom-node status``, open the
store they wait for the lock, find ``head`` and go on. A process that loses the race never sees a half-made schema.

Rolling upgrades: each revision declares ``additive`` (new tables, new nullable columns, new indexes: a process of
the previous version still running against the upgraded database keeps working until it is restarted). An upgrade
records the compatibility floor of the new head; a running older node checks it (:class:`compat.SchemaGuard`)
and stops taking work when a non-additive revision lands.
"""

from __future__ import annotations

import functools
import logging
import zlib
from pathlib import Path

logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # 7 INFO lines per process at import

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import inspect, text  # noqa: E402
from sqlalchemy.engine import Connection, Engine  # noqa: E402

from node.store import compat  # noqa: E402
from node.store.compat import SchemaError  # noqa: E402  (raised here; defined with the compatibility rules)

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001_baseline"
VERSION_TABLE = "alembic_version"
# pg_advisory_xact_lock key: a fixed number of this schema, so that two nodes sharing a server do not collide
# with other applications' locks.
_PG_LOCK_KEY = zlib.crc32(b"dicom-ai-node schema migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration pointing at the migrations shipped in this package (``connection``: use it)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _scripts().get_current_head()
    assert head is not None, "no migration revisions shipped"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in the database (None: no ``alembic_version`` table, or it is empty)."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None  # read here rather than by Alembic's MigrationContext, which logs at INFO on every open
    revisions = [r[0] for r in connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    if len(revisions) > 1:
        raise SchemaError(f"the database has several schema revisions {revisions}: a branched migration history")
    return revisions[0] if revisions else None


def _lock(connection: Connection) -> None:
    # SQLite: the transaction began with BEGIN IMMEDIATE (make_engine), which already is the write lock.
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def ensure_schema(engine: Engine) -> str:
    """Bring the database of ``engine`` to ``head`` (safe to call from several processes at once).

    Returns the revision the database is at afterwards (a newer one than ``head`` when a newer node upgraded it
    additively). Raises :class:`SchemaError` when the database was written by a newer version of the node that
    this code cannot work with (a revision it does not know, past a non-additive one it does not know either).
    """
    head = head_revision()
    with engine.begin() as conn:
        _lock(conn)
        before = current_revision(conn)
        if before == head:
            return head
        if before is not None and not compat.knows(_scripts(), before):
            floor = compat.read_floor(conn)
            reason = compat.verdict(_scripts(), head, before, floor)
            if reason is not None:
                raise SchemaError(reason)
            log.warning("the database is at schema revision %s, newer than this node's %s, and compatible from %s "
                        "(every later revision is additive): running; upgrade this node soon", before, head, floor)
            return before
        if before is None and inspect(conn).get_table_names():
            log.warning("adopting a database made before schema migrations: stamping revision %s", BASELINE)
        command.upgrade(alembic_config(conn), "head")
        after = current_revision(conn) or head
        compat.write(conn, after, compat.floor_of(_scripts(), after))
    log.info("database schema upgraded from %s to %s", before or "nothing", after)
    return after


def schema_guard(engine: Engine) -> compat.SchemaGuard:
    """The running node's check that a newer node has not upgraded the database past what this code can use."""
    return compat.SchemaGuard(engine, _scripts(), head_revision())
