"""The checks of two marker rules (tests/conftest.py), read from what each test does while it runs:

* ``engine``: a test that opens the node's database in the test process and is marked neither ``engine`` nor
  ``sqlite`` fails (so no store-touching test is left out of the PostgreSQL pass, which runs only ``engine`` tests);
  a ``nodb`` test that opens one fails too. "Opens the node's database" is read from SQLAlchemy itself: every new
  DBAPI connection of any engine's pool in the test process (the node's store, Services, an in-process SCP or HTTP
  app, migrations, a test's own SQL), except those ``support/testdb.py`` makes to create the databases of the
  PostgreSQL pass. Nodes started as processes are not seen: that part of the rule is a judgment, in the lists.
  Checked in the SQLite pass, which runs every test (on PostgreSQL the tests' helpers connect through SQLAlchemy).
* ``own_engine``: a test marked so names its databases itself (its own PostgreSQL server, a ``sqlite:///`` URL,
  parameters over both): the PostgreSQL pass would run it unchanged and leaves it out. It fails when it used the
  database the pass chooses: a node configuration without ``database.url`` read in the test process
  (``NodeConfig.database_url`` falling back to the default), or a node process started without one.
* ``slow``: a test that starts another program (``subprocess``: a node, storescu, Orthanc, a browser, dciodvfy,
  PixelMed, a server; or a ``multiprocessing`` process) and is not marked ``slow`` fails: ``pytest -m "not slow"``
  is the quick, in-process part of the suite.

What module- or session-scoped fixtures do while they are set up is nobody's in particular (it would land on
whichever test happens to come first) and is not counted; nor is what ``support/testdb.py`` does (the PostgreSQL
server of the PostgreSQL pass, its databases).

The failure is the test's teardown error, naming the fix. A pytest plugin: tests/conftest.py takes its hooks;
``pytest -p support.marker_rules`` loads it alone (tests/test_marker_rules.py does, on a test file of its own).
"""

from __future__ import annotations

import multiprocessing.process
import subprocess
import sys
from pathlib import Path

import pytest

from support import testdb

_HARNESS_FILES = (str(Path(__file__).parent / "testdb.py"),)
_AT_START = pytest.StashKey[tuple[int, int, int]]()
WHERE = "in tests/conftest.py (ENGINE_MODULES / ENGINE_TESTS, SLOW_MODULES / SLOW_TESTS), or mark it yourself"


class Seen:
    """What the test process did: SQLAlchemy connections made (the harness's own left out), programs started."""

    connections = 0
    programs = 0
    pass_databases = 0  # uses of the database the pass chooses (no database.url: the default, or testdb's)
    shared_fixtures = 0  # > 0 while a module- or session-scoped fixture is set up: not one test's doing

    @classmethod
    def by_a_test(cls) -> bool:
        """Is what is happening now a test's own doing (not a shared fixture's, not the harness's)?"""
        if cls.shared_fixtures:
            return False
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename in _HARNESS_FILES:
                return False
            frame = frame.f_back
        return True

    @classmethod
    def on_connect(cls, *_args: object) -> None:
        if cls.by_a_test():
            cls.connections += 1


def verdict(connections: int, programs: int, markers: set[str], pass_databases: int = 0) -> str | None:
    """Why a test that made ``connections``, started ``programs`` and used ``pass_databases`` databases of the
    pass's choosing breaks a rule, given its ``markers``."""
    why = []
    if connections and "nodb" in markers:
        why.append("is marked nodb (its module is in NO_DATABASE_MODULES) but opened a database")
    elif connections and not markers & {"engine", "sqlite", "own_engine"}:
        why.append("opened the node's database in the test process (a SQLAlchemy connection) but is not marked "
                   f"`engine`: add it {WHERE}, so that the PostgreSQL pass runs it")
    if pass_databases and "own_engine" in markers:
        why.append("is marked own_engine but used the database the pass chooses (a configuration without "
                   f"database.url): the PostgreSQL pass must run it, mark it `engine` instead {WHERE}")
    if programs and "slow" not in markers:
        why.append(f"started {programs} program(s) (subprocess / multiprocessing) but is not marked `slow`: add it "
                   f"{WHERE}")
    return "; ".join(why) or None


def _count_programs(original):
    def start(self, *args, **kwargs):
        if Seen.by_a_test():
            Seen.programs += 1
        return original(self, *args, **kwargs)

    start.__wrapped__ = original  # type: ignore[attr-defined]
    return start


def _count_pass_database(original):
    def database_url(self):
        if not self.database.url:
            Seen.pass_databases += 1
        return original.fget(self)

    return property(database_url)


def _count_pass_database_of_process(original):
    def init(self, tmp, config, *args, **kwargs):
        if not (config.get("database") or {}).get("url") or testdb.on_postgresql():
            Seen.pass_databases += 1
        return original(self, tmp, config, *args, **kwargs)

    init.__wrapped__ = original  # type: ignore[attr-defined]
    return init


def pytest_configure(config: pytest.Config) -> None:
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    from node.config import NodeConfig
    from support.nodeproc import NodeProcess

    config.addinivalue_line("markers", "engine: the outcome can depend on the database engine")
    config.addinivalue_line("markers", "slow: starts other programs")
    config.addinivalue_line("markers", "own_engine: names its databases itself")
    if not hasattr(NodeConfig.database_url.fget, "counted"):
        NodeConfig.database_url = _count_pass_database(NodeConfig.database_url)  # type: ignore[method-assign]
        NodeConfig.database_url.fget.counted = True  # type: ignore[attr-defined]
    if not hasattr(NodeProcess.__init__, "__wrapped__"):
        NodeProcess.__init__ = _count_pass_database_of_process(NodeProcess.__init__)  # type: ignore[method-assign]
    if not event.contains(Pool, "connect", Seen.on_connect):
        event.listen(Pool, "connect", Seen.on_connect)
    if not hasattr(subprocess.Popen.__init__, "__wrapped__"):
        subprocess.Popen.__init__ = _count_programs(subprocess.Popen.__init__)  # type: ignore[method-assign]
    if not hasattr(multiprocessing.process.BaseProcess.start, "__wrapped__"):
        multiprocessing.process.BaseProcess.start = _count_programs(  # type: ignore[method-assign]
            multiprocessing.process.BaseProcess.start)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    shared = fixturedef.scope != "function"
    Seen.shared_fixtures += shared
    try:
        return (yield)
    finally:
        Seen.shared_fixtures -= shared


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_AT_START] = (Seen.connections, Seen.programs, Seen.pass_databases)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if call.when != "teardown" or report.failed:
        return report
    connections, programs, pass_databases = item.stash.get(
        _AT_START, (Seen.connections, Seen.programs, Seen.pass_databases))
    connections = 0 if testdb.on_postgresql() else Seen.connections - connections
    why = verdict(connections, Seen.programs - programs, {m.name for m in item.iter_markers()},
                  Seen.pass_databases - pass_databases)
    if why is not None:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} {why}"
    return report
