"""Which database the tests give the node: SQLite (the default) or PostgreSQL (``DICOM_NODE_TEST_DATABASE``).

``DICOM_NODE_TEST_DATABASE`` unset or empty: every test uses the node's default, ``sqlite:///<storage_dir>/node.db``.
``DICOM_NODE_TEST_DATABASE=postgresql``: the test session starts its own throwaway server
(:class:`support.postgres.PostgresServer`, a free loopback port; stopped when the session ends) and every database
a test makes is a fresh database on it. ``DICOM_NODE_TEST_DATABASE=postgresql+psycopg://user@host:port/db`` (or
``postgresql://...``): the same on that server (the user must be allowed to CREATE DATABASE); the databases the
session created are dropped when it ends.

Tests about SQLite itself (its synchronous pragma, WAL files, the SQLite queue, a SQLite file restored from a
fixture) keep naming their ``sqlite:///`` URLs and are not affected.
"""

from __future__ import annotations

import atexit
import os
import threading
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

ENV = "DICOM_NODE_TEST_DATABASE"

_lock = threading.Lock()
_server = None  # PostgresServer started by this session (value "postgresql")
_created: list[str] = []  # names of databases made on an outside server (dropped at the end)
_by_storage: dict[str, str] = {}  # storage_dir -> its database URL: one database per node folder


def setting() -> str:
    """The value of ``DICOM_NODE_TEST_DATABASE`` ('' when the tests run on SQLite)."""
    return os.environ.get(ENV, "").strip()


def on_postgresql() -> bool:
    """True when the tests give the node PostgreSQL databases."""
    value = setting()
    if not value:
        return False
    if value == "postgresql" or value.startswith(("postgresql://", "postgresql+psycopg://")):
        return True
    raise RuntimeError(f"{ENV}={value!r}: allowed: postgresql (start a server) or "
                       "postgresql[+psycopg]://USER@HOST:PORT/DB")


def _server_url() -> str:
    """The URL of the maintenance database of the server the tests use (started on first use)."""
    global _server
    value = setting()
    if value != "postgresql":
        return str(make_url(value).set(drivername="postgresql+psycopg"))
    with _lock:
        if _server is None:
            from .postgres import PostgresServer

            _server = PostgresServer().start()
            atexit.register(finish)  # processes without pytest's session end (bench soak uses node_config too)
        return _server.url()


def fresh_postgresql_url() -> str:
    """A new, empty database on the test PostgreSQL server; returns its SQLAlchemy URL (psycopg 3)."""
    base = make_url(_server_url())
    name = f"t_{uuid.uuid4().hex[:16]}"
    engine = create_engine(base, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    if setting() != "postgresql":
        _created.append(name)
    return base.set(database=name).render_as_string(hide_password=False)


def database_url(storage_dir: Path) -> str:
    """The database URL a node with ``storage_dir`` gets in the tests (the same URL for the same folder)."""
    if not on_postgresql():
        return f"sqlite:///{Path(storage_dir) / 'node.db'}"
    key = str(Path(storage_dir).resolve())
    with _lock:
        known = _by_storage.get(key)
    if known is None:
        known = fresh_postgresql_url()
        with _lock:
            known = _by_storage.setdefault(key, known)
    return known


def database_section(storage_dir: Path) -> dict[str, str]:
    """The ``database:`` section of a test node's configuration ({} on SQLite: the node's own default)."""
    return {"url": database_url(storage_dir)} if on_postgresql() else {}


def finish() -> None:
    """Stop the server this session started, or drop the databases it made on an outside one."""
    global _server
    with _lock:
        server, _server = _server, None
        names, _created[:] = list(_created), []
        _by_storage.clear()
    if server is not None:
        server.stop()
        return
    if names:
        engine = create_engine(_server_url(), poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for name in names:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()
