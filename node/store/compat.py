"""Rolling upgrades: which versions of the node may share one database (the compatibility floor).

Every migration revision declares ``additive = True`` when a node of the previous version keeps working on the
upgraded schema (new tables, new nullable columns or columns with a server default, new indexes), and
``additive = False`` (or nothing) when it does not (a dropped or renamed column, a new NOT NULL column without a
server default, a changed meaning). The *compatibility floor* of a head revision is the newest non-additive
revision at or below it: code whose own head is at or past the floor can run against that database.

The node that upgrades a database writes its head and floor into the one row of ``schema_compat``
(:func:`write`). A node whose code does not know the database's revision (a newer node upgraded it) then:

- runs, with a WARNING, when it knows the floor (every revision past its own head was additive);
- refuses to start, naming the database's revision, the floor and its own head, when it does not;
- while running, checks the same thing every few seconds (:class:`SchemaGuard`, one small read) and stops taking
  work (claims, new instances) with the same clear error once a non-additive upgrade lands.
"""

from __future__ import annotations

import logging
import threading
import time

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import column, delete, insert, inspect, select, table, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

CHECK_EVERY_SECONDS = 5.0

# node.store.schema.schema_compat, named here without importing schema.py (whose ensure_schema imports this module)
schema_compat = table("schema_compat", column("id"), column("revision"), column("compatible_from"),
                      column("written_at"))


class SchemaError(RuntimeError):
    """The database's schema revision is one this code cannot work with."""


class IncompatibleSchema(SchemaError, SQLAlchemyError):
    """A newer node upgraded the database past what this running node can use.

    Also a :class:`~sqlalchemy.exc.SQLAlchemyError`, so that every caller that already treats a failed database
    write as "not done" treats it the same way: the SCP answers 0xA700 and keeps no file, a task leaves its job
    or send to another node.
    """


def is_additive(scripts: ScriptDirectory, revision: str) -> bool:
    """Does ``revision`` declare ``additive = True`` (nodes of the previous version keep working)?"""
    return bool(getattr(scripts.get_revision(revision).module, "additive", False))


def floor_of(scripts: ScriptDirectory, head: str) -> str:
    """The newest non-additive revision at or below ``head`` (the baseline at the latest)."""
    for script in scripts.walk_revisions(base="base", head=head):  # newest first
        if not getattr(script.module, "additive", False):
            return script.revision
    raise SchemaError(f"no non-additive revision at or below {head!r}: the baseline must not be additive")


def knows(scripts: ScriptDirectory, revision: str) -> bool:
    """Is ``revision`` one of the revisions shipped with this code?"""
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


def read_floor(conn: Connection) -> str | None:
    """The compatibility floor the last upgrading node wrote (None: no ``schema_compat`` row)."""
    if not inspect(conn).has_table(schema_compat.name):
        return None
    return conn.execute(select(schema_compat.c.compatible_from).where(schema_compat.c.id == 1)).scalar()


def write(conn: Connection, revision: str, floor: str) -> None:
    """Record ``revision`` (the database's, after an upgrade) and its compatibility floor."""
    conn.execute(delete(schema_compat))
    conn.execute(insert(schema_compat).values(id=1, revision=revision, compatible_from=floor,
                                              written_at=time.time()))


def verdict(scripts: ScriptDirectory, head: str, revision: str | None, floor: str | None) -> str | None:
    """None when code at ``head`` may use a database at ``revision`` with ``floor``; else the reason, in words."""
    if revision is None or knows(scripts, revision):
        return None
    if floor is not None and knows(scripts, floor):
        return None
    needs = (f"needs a node whose schema is at {floor!r} or newer" if floor is not None
             else "records no compatibility floor")
    return (f"the database is at schema revision {revision!r}, written by a newer node; it {needs}, and this "
            f"node's newest revision is {head!r}: upgrade this node (or restore a backup made before the upgrade)")


class SchemaGuard:
    """Checks, at most every ``interval`` seconds, that a newer node has not made the database unusable to this one."""

    def __init__(self, engine: Engine, scripts: ScriptDirectory, head: str,
                 interval: float = CHECK_EVERY_SECONDS) -> None:
        self.engine = engine
        self.scripts = scripts
        self.head = head
        self.interval = interval
        self.refused: str | None = None  # once set, for good: a restart with newer code is the way out
        self._checked_at = -float("inf")
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise :class:`IncompatibleSchema` when the database moved past this code's floor (cheap when not due)."""
        if self.refused is None and time.monotonic() - self._checked_at >= self.interval:
            with self._lock:
                if time.monotonic() - self._checked_at >= self.interval:
                    self._checked_at = time.monotonic()
                    self._read()
        if self.refused is not None:
            raise IncompatibleSchema(self.refused)

    def _read(self) -> None:
        with self.engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            floor = read_floor(conn) if revision is not None and not knows(self.scripts, revision) else None
        reason = verdict(self.scripts, self.head, revision, floor)
        if reason is not None:
            self.refused = reason
            log.error("this node stops taking work: %s", reason)
