"""Shared fixtures: where the real DICOM test data lives; the harnesses themselves are in ``support/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import testdb
from support.data import data_dir

# Property-based tests: the same examples on every run by default, so a landing gate cannot flake;
# HYPOTHESIS_PROFILE=explore draws new ones each run (how new bad inputs are looked for).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("deterministic", derandomize=True, database=None)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="session")
def data() -> Path:
    return data_dir()


@pytest.fixture(autouse=True)
def _test_database(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """With ``DICOM_NODE_TEST_DATABASE`` set, a configuration without ``database.url`` gets a fresh PostgreSQL
    database per storage folder instead of ``<storage_dir>/node.db`` (see ``support/testdb.py``); nodes started as
    processes get the same URL written into their file by ``support.nodeproc.node_config``."""
    if not testdb.on_postgresql() or request.node.get_closest_marker("sqlite"):
        return
    from node.config import NodeConfig

    def database_url(self: NodeConfig) -> str:
        return self.database.url or testdb.database_url(self.storage_dir)

    monkeypatch.setattr(NodeConfig, "database_url", property(database_url))


#: Test modules that never open the node's database (converters, DICOM writers, the test harnesses themselves, the
#: setup script): marked ``nodb``, so that the PostgreSQL pass of scripts/test.sh (-m "not nodb") leaves them out.
NO_DATABASE_MODULES = frozenset({
    "test_cxr_views", "test_emulator", "test_gsps_writer", "test_invoke_client", "test_key_rotation", "test_kos",
    "test_netpoll", "test_orthanc_fixture", "test_parse_contract", "test_pynetdicom_patches",
    "test_receive_contexts", "test_sc_writer", "test_scu_status", "test_security_egress", "test_seg_writer", "test_sso_roles",
    "test_setup_script", "test_sr_writer", "test_support_pacs", "test_volume",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in NO_DATABASE_MODULES:
            item.add_marker(pytest.mark.nodb)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    testdb.finish()
