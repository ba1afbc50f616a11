"""Store access for the HTTP side's sign-outs (table ``http_sessions_ended``, node/store/schema_sso.py)."""

from __future__ import annotations

import hashlib
import time

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from node.store.schema import http_sessions_ended


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def end_session(engine: Engine, sid: str, expires_at: float) -> None:
    """Record that session ``sid`` was signed out (kept until ``expires_at``); drop the rows past their expiry."""
    with engine.begin() as conn:
        conn.execute(delete(http_sessions_ended).where(http_sessions_ended.c.expires_at < time.time()))
        try:
            with conn.begin_nested():
                conn.execute(insert(http_sessions_ended).values(sid_sha256=_key(sid), expires_at=expires_at))
        except IntegrityError:  # signed out twice (two tabs): once is enough
            pass


def session_ended(engine: Engine, sid: str) -> bool:
    """Was session ``sid`` signed out?"""
    with engine.connect() as conn:
        return conn.execute(select(http_sessions_ended.c.sid_sha256)
                            .where(http_sessions_ended.c.sid_sha256 == _key(sid))).first() is not None
