"""The HTTP side's sign-outs in the node's database (node/store/sessions.py): on SQLite and, in the PostgreSQL pass,
on PostgreSQL (its savepoint around a repeated sign-out included)."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import func, select

from node.store.schema import http_sessions_ended
from node.store.sessions import end_session, session_ended
from node.store.state import Store


def test_sign_outs_are_kept_until_the_session_would_have_ended(tmp_path: Path) -> None:
    from node.config import parse_config

    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")}})
    engine = Store.open(cfg.database_url).engine
    now = time.time()
    assert not session_ended(engine, "sid-a")
    end_session(engine, "sid-a", now + 3600)
    end_session(engine, "sid-a", now + 3600)  # signed out in two tabs: once is enough, no error
    end_session(engine, "sid-old", now - 1)  # already past its end: dropped at the next sign-out
    assert session_ended(engine, "sid-a") and not session_ended(engine, "sid-b")
    end_session(engine, "sid-c", now + 60)
    with engine.connect() as conn:
        keys = [r[0] for r in conn.execute(select(http_sessions_ended.c.sid_sha256))]
        assert conn.execute(select(func.count()).select_from(http_sessions_ended)).scalar() == 2
    assert "sid-a" not in keys and all(len(k) == 64 for k in keys), "only a hash of the session id is kept"
