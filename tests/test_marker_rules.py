"""The PostgreSQL pass runs only `engine` tests: the check that no store-touching test is left out can fail.

tests/support.marker_rules.py fails, in its teardown, a test that opens the node's database in the test process while
marked neither `engine` nor `sqlite` (and a `nodb` test that opens one). Here it runs, as a pytest plugin, on a test
file of its own: the unmarked store-opening test fails naming the fix, the marked ones and one without a database
pass. The markers the suite uses are all registered (``--strict-markers``) and the PostgreSQL pass's selection is
not empty.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.data import REPO

pytestmark = pytest.mark.slow  # runs pytest as a program

SAMPLE = '''
import subprocess

import pytest
from node.store.state import Store


def _open(tmp_path):
    Store.open(f"sqlite:///{tmp_path / 'node.db'}").engine.dispose()


def test_unmarked_opens_the_store(tmp_path):
    _open(tmp_path)


@pytest.mark.engine
def test_marked_engine(tmp_path):
    _open(tmp_path)


@pytest.mark.sqlite
def test_marked_sqlite(tmp_path):
    _open(tmp_path)


@pytest.mark.nodb
def test_marked_nodb_but_opens_it(tmp_path):
    _open(tmp_path)


def test_without_a_database():
    assert True


def test_unmarked_starts_a_program():
    subprocess.run(["true"], check=True)


@pytest.mark.slow
def test_marked_slow_starts_a_program():
    subprocess.run(["true"], check=True)


@pytest.mark.own_engine
def test_own_engine_naming_its_database(tmp_path):
    from node.config import parse_config

    assert parse_config({"node": {"storage_dir": str(tmp_path)},
                         "database": {"url": f"sqlite:///{tmp_path / 'x.db'}"}}).database_url


@pytest.mark.own_engine
def test_own_engine_but_follows_the_pass(tmp_path):
    from node.config import parse_config

    assert parse_config({"node": {"storage_dir": str(tmp_path)}}).database_url  # the default: the pass's choice
'''


def test_a_test_that_opens_the_store_or_starts_a_program_unmarked_fails_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
           "DICOM_NODE_TEST_DATABASE": ""}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "support.marker_rules", "-p", "no:cacheprovider",
                          "-p", "no:xdist", "-q", "-rA", "test_sample.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert re.search(r"\b9 passed\b.* 4 errors", text), text
    errors = sorted(re.findall(r"^ERROR test_sample.py::(\w+)", text, re.M))
    assert errors == ["test_marked_nodb_but_opens_it", "test_own_engine_but_follows_the_pass",
                      "test_unmarked_opens_the_store", "test_unmarked_starts_a_program"], text
    assert "not marked `engine`" in text and "is marked nodb" in text and "not marked `slow`" in text, text
    assert "is marked own_engine but used the database the pass chooses" in text, text


def test_the_postgresql_pass_selects_the_engine_tests() -> None:
    """What the PostgreSQL pass takes of a few modules: the store's, not the writers', SQLite's own, or those that
    name their engines themselves."""
    modules = ["test_store_concurrency.py", "test_rolling_upgrade.py", "test_receive.py", "test_sr_writer.py",
               "test_rules.py", "test_durability_order.py"]
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-m", "engine and not sqlite", *(f"tests/{m}" for m in modules)], cwd=REPO,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    selected = {line.split("::")[0].removeprefix("tests/") for line in out.stdout.splitlines() if "::" in line}
    # test_store_concurrency and test_rolling_upgrade name their engines (own_engine): every pass runs them so
    assert selected == {"test_receive.py"}, out.stdout
