"""Positions of polled sources (the Azure DICOM service's change feed) in the ``source_offsets`` table.

The position moves only after the instances of the entries it passes are recorded, in its own transaction: a
crash in between repeats those entries on restart, and the poller skips an instance the node already holds, so
nothing is missed and nothing is ingested twice.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from node.store.conflicts import retry_on_conflict
from node.store.schema import results, source_offsets


def position(engine: Engine, source: str) -> dict[str, Any]:
    """The source's row (``feed_offset``, ``last_sequence``, ...); zeros for a source never polled."""
    with engine.connect() as conn:
        row = conn.execute(select(source_offsets).where(source_offsets.c.source == source)).mappings().first()
    if row is None:
        return {"source": source, "feed_offset": 0, "last_sequence": 0, "ingested": 0, "failures": 0,
                "last_error": None, "next_poll_at": None, "updated_at": None}
    return dict(row)


@retry_on_conflict  # two pollers of one source (two nodes) creating its row at once (PostgreSQL)
def _upsert(engine: Engine, source: str, **values: Any) -> None:
    values["updated_at"] = time.time()
    with engine.begin() as conn:
        exists = conn.execute(select(source_offsets.c.source).where(source_offsets.c.source == source)).first()
        if exists is None:
            base = {"feed_offset": 0, "last_sequence": 0, "ingested": 0, "failures": 0}
            conn.execute(source_offsets.insert().values(source=source, **{**base, **values}))
        else:
            conn.execute(source_offsets.update().where(source_offsets.c.source == source).values(**values))


def advance(engine: Engine, source: str, feed_offset: int, last_sequence: int, ingested: int) -> None:
    """Durably move the source's position past the entries consumed; clears its failure count."""
    _upsert(engine, source, feed_offset=feed_offset, last_sequence=last_sequence, ingested=ingested, failures=0,
            last_error=None, next_poll_at=None)


def failed(engine: Engine, source: str, failures: int, error: str, next_poll_at: float) -> None:
    """Record a failed poll (for ``dicom-node status``); the position stays where it was."""
    _upsert(engine, source, failures=failures, last_error=error[:500], next_poll_at=next_poll_at)


def recovered(engine: Engine, source: str) -> None:
    """A poll succeeded again: clear the failure count and error."""
    _upsert(engine, source, failures=0, last_error=None, next_poll_at=None)


def is_own_result(engine: Engine, sop_instance_uid: str) -> bool:
    """Whether the node wrote this instance (a result that came back through the source it was sent to)."""
    with engine.connect() as conn:
        return conn.execute(select(results.c.sop_instance_uid)
                            .where(results.c.sop_instance_uid == sop_instance_uid)).first() is not None


def all_sources(engine: Engine) -> list[dict[str, Any]]:
    """Every source's row, for status."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(source_offsets).order_by(source_offsets.c.source)).mappings()]
