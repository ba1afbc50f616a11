"""The table of the HTTP side's sign-outs (node/http/sso.py), defined on the one ``metadata`` of
:mod:`node.store.schema`, which calls :func:`sso_tables` (this module imports nothing of the node: no import cycle).
Revision ``0010_sso`` creates it.

- ``http_sessions_ended``: a session cookie signed out before its end, by the SHA-256 of its session id, kept until
  the cookie would have expired: every HTTP side of the node (and of a cluster on one database) refuses a copy of
  it, across restarts.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, MetaData, String, Table


def sso_tables(metadata: MetaData) -> tuple[Table]:
    """Define the tables on ``metadata``: (http_sessions_ended,)."""
    ended = Table(
        "http_sessions_ended",
        metadata,
        Column("sid_sha256", String(64), primary_key=True),
        Column("expires_at", Float, nullable=False, index=True),
    )
    return (ended,)
