"""Unique-key races between writers, handled as SQLite's serialised writers would have seen them.

On SQLite every transaction starts with ``BEGIN IMMEDIATE`` (:func:`node.store.schema.make_engine`): writers take
turns, so "read, then insert if missing" cannot race. On PostgreSQL (READ COMMITTED) two transactions can both
read "missing" and both insert; the second fails with a unique-key violation once the first commits. Running that
whole transaction again then takes the "row exists" path, which is what the serialised order would have done.
"""

from __future__ import annotations

import functools
from typing import Callable, ParamSpec, TypeVar

from sqlalchemy.exc import IntegrityError

P = ParamSpec("P")
T = TypeVar("T")

ATTEMPTS = 5


def retry_on_conflict(fn: Callable[P, T]) -> Callable[P, T]:
    """Run ``fn`` (one whole transaction) again, up to :data:`ATTEMPTS` times, when it lost a unique-key race."""
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(ATTEMPTS):
            try:
                return fn(*args, **kwargs)
            except IntegrityError:
                if attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    return run
