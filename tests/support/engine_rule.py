"""The check of the `engine` rule (tests/conftest.py): a test that opens the node's database in the test process
and is marked neither ``engine`` nor ``sqlite`` fails, so that no store-touching test is left out of the PostgreSQL
pass (which runs only ``engine`` tests); a ``nodb`` test that opens one fails too.

"Opens the node's database" is read from SQLAlchemy itself: every new DBAPI connection of any engine's pool in the
test process (the node's store, Services, an in-process SCP or HTTP app, migrations, a test's own SQL), except those
``support/testdb.py`` makes to create the databases of the PostgreSQL pass. Nodes started as processes are not seen:
that is rule (b), a judgment written in the lists. The check runs in the SQLite pass, which runs every test (on
PostgreSQL the tests' own helpers connect through SQLAlchemy too).

A pytest plugin: tests/conftest.py takes its hooks; ``pytest -p support.engine_rule`` loads it alone
(tests/test_engine_rule.py does, on a test file of its own).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support import testdb

_HARNESS_FILES = (str(Path(__file__).parent / "testdb.py"),)
_AT_START = pytest.StashKey[int]()
HINT = ("add its module to ENGINE_MODULES (or the test to ENGINE_TESTS) in tests/conftest.py, or mark it "
        "@pytest.mark.engine, so that the PostgreSQL pass runs it")


class Connections:
    """How many SQLAlchemy connections the test process made, the harness's own left out."""

    count = 0

    @classmethod
    def on_connect(cls, *_args: object) -> None:
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename in _HARNESS_FILES:
                return
            frame = frame.f_back
        cls.count += 1


def verdict(opened: int, markers: set[str]) -> str | None:
    """Why a test that made ``opened`` connections and carries ``markers`` breaks the rule (None: it does not)."""
    if opened and "nodb" in markers:
        return "is marked nodb (its module is in NO_DATABASE_MODULES) but opened a database"
    if opened and not markers & {"engine", "sqlite"}:
        return f"opened the node's database in the test process (a SQLAlchemy connection) but is not marked `engine`: {HINT}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    config.addinivalue_line("markers", "engine: the outcome can depend on the database engine")
    if not event.contains(Pool, "connect", Connections.on_connect):
        event.listen(Pool, "connect", Connections.on_connect)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_AT_START] = Connections.count


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if call.when != "teardown" or report.failed or testdb.on_postgresql():
        return report
    opened = Connections.count - item.stash.get(_AT_START, Connections.count)
    why = verdict(opened, {m.name for m in item.iter_markers()})
    if why is not None:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} {why}"
    return report
