"""Schema migrations (node/store/migrate.py): empty databases, databases made before migrations, re-runs, races.

The database made before migrations is ``tests/data/db_before_alembic.sql`` (written by the code of commit
35e38db, see tests/data/make_db_before_alembic.py): one done job with one result whose outbox row is still
pending for destination "pacs". The end-to-end test starts ``dicom-node serve`` on it and counts the C-STORE
at a real dcmtk storescp.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import sqlite3
import time
from pathlib import Path

import pydicom
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydicom.dataset import FileMetaDataset
from sqlalchemy import inspect, text

from support.dcmtk import Storescp
from node.store.migrate import BASELINE, SchemaError, alembic_config, current_revision, ensure_schema, head_revision
from node.store.schema import make_engine, metadata
from node.store.state import Store
from support.nodeproc import NodeProcess, node_config

DATA = Path(__file__).parent / "data"
RESULT_UID = "1.2.826.0.1.3680043.10.543.1.9.1"  # as in make_db_before_alembic.py
STUDY_UID = "1.2.826.0.1.3680043.10.543.1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def legacy_db(folder: Path, result_path: Path) -> Path:
    """The pre-migration fixture restored as ``folder/node.db``, its result pointing at ``result_path``."""
    folder.mkdir(parents=True, exist_ok=True)
    sql = (DATA / "db_before_alembic.sql").read_text()
    sql = sql.replace("@RESULT_PATH@", str(result_path)).replace("@SPOOL_PATH@", str(folder / "spool.dcm"))
    db = folder / "node.db"
    con = sqlite3.connect(db)
    con.executescript(sql)
    con.close()
    return db


def write_result(path: Path) -> Path:
    """A small Comprehensive SR with the fixture's result UID: what the outbox row sends."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SR_CLASS
    meta.MediaStorageSOPInstanceUID = RESULT_UID
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SR_CLASS, RESULT_UID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, STUDY_UID + ".9"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def shape(url: str) -> dict:
    """Tables, columns, keys, unique constraints and indexes as SQLAlchemy reflects them (no alembic_version)."""
    engine = make_engine(url)
    try:
        insp = inspect(engine)
        out = {}
        for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
            out[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
                "pk": insp.get_pk_constraint(table)["constrained_columns"],
                "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                              for f in insp.get_foreign_keys(table)),
                "unique": sorted((u["name"] or "", tuple(u["column_names"]))
                                 for u in insp.get_unique_constraints(table)),
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                                  for i in insp.get_indexes(table)),
            }
        return out
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()


def test_an_empty_database_gets_head_and_the_tables_of_schema_py(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    Store.open(url).engine.dispose()
    assert revision_of(url) == head_revision()
    reference = f"sqlite:///{tmp_path / 'create_all.db'}"
    engine = make_engine(reference)
    metadata.create_all(engine)
    engine.dispose()
    assert shape(url) == shape(reference)
    assert set(shape(url)) == set(metadata.tables)
    engine = make_engine(url)
    with engine.connect() as conn:  # what a new revision must cover when schema.py changes
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_an_empty_postgresql_database_gets_the_tables_of_schema_py() -> None:
    """The same comparison on PostgreSQL, where types are checked for real (compare_type)."""
    from support.postgres import PostgresServer

    with PostgresServer() as pg:
        url, reference = pg.create_database(), pg.create_database()
        Store.open(url).engine.dispose()
        engine = make_engine(reference)
        metadata.create_all(engine)
        engine.dispose()
        assert shape(url) == shape(reference)
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        finally:
            engine.dispose()


def test_a_second_upgrade_is_a_no_op(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    engine = make_engine(url)
    assert ensure_schema(engine) == head_revision()
    with engine.connect() as conn:
        before = conn.execute(text("SELECT type, name, sql FROM sqlite_master ORDER BY name")).all()
    with caplog.at_level(logging.INFO, logger="node.store.migrate"):
        assert ensure_schema(engine) == head_revision()
        Store.open(url).engine.dispose()
    assert not caplog.records, "an up-to-date database is left alone"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT type, name, sql FROM sqlite_master ORDER BY name")).all() == before
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()


def test_a_database_made_before_migrations_is_adopted_with_its_rows(tmp_path: Path) -> None:
    db = legacy_db(tmp_path / "var", tmp_path / "result.dcm")
    url = f"sqlite:///{db}"
    assert revision_of(url) is None
    store = Store.open(url)
    assert revision_of(url) == head_revision()
    assert store.summary()["outbox"] == {"pending": 1}
    assert store.study(STUDY_UID)["state"] == "done"
    store.engine.dispose()
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    Store.open(fresh).engine.dispose()
    assert shape(url) == shape(fresh)


def test_a_database_missing_tables_of_an_older_node_gets_them(tmp_path: Path) -> None:
    db = legacy_db(tmp_path / "var", tmp_path / "result.dcm")
    con = sqlite3.connect(db)
    con.executescript("DROP TABLE text_embeddings; DROP TABLE classifications;")  # as before MedImageInsight
    con.close()
    store = Store.open(f"sqlite:///{db}")
    assert {"text_embeddings", "classifications"} <= set(inspect(store.engine).get_table_names())
    assert store.summary()["outbox"] == {"pending": 1}
    store.engine.dispose()


def _from_the_future(db: Path, floor: str) -> None:
    """Make ``db`` look upgraded by a newer node: an unknown revision, and the floor that node recorded."""
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    con.execute("UPDATE schema_compat SET revision = '0099_from_the_future', compatible_from = ?", (floor,))
    con.commit()
    con.close()


def test_a_database_from_a_newer_node_past_a_non_additive_revision_is_refused_naming_both(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    Store.open(url).engine.dispose()
    _from_the_future(tmp_path / "node.db", "0098_renames_a_column")
    with pytest.raises(SchemaError, match=r"0099_from_the_future.*0098_renames_a_column.*" + head_revision()):
        Store.open(url)


def test_a_database_from_a_newer_node_with_only_additive_revisions_is_used_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    Store.open(url).engine.dispose()
    _from_the_future(tmp_path / "node.db", head_revision())  # every revision after this code's head was additive
    with caplog.at_level(logging.WARNING, logger="node.store.migrate"):
        store = Store.open(url)
    assert "0099_from_the_future" in caplog.text and f"compatible from {head_revision()}" in caplog.text
    assert revision_of(url) == "0099_from_the_future", "an older node never touches a newer schema"
    store.engine.dispose()


def test_the_compatibility_floor_is_the_newest_non_additive_revision() -> None:
    """The baseline creates everything (not additive); every revision after it so far adds tables or columns."""
    from node.store import compat
    from node.store.migrate import _scripts

    assert not compat.is_additive(_scripts(), BASELINE)
    assert all(compat.is_additive(_scripts(), r) for r in
               ("0002_dicomweb", "0003_resilience", "0004_outbox_verify", "0005_compat_floor"))
    assert compat.floor_of(_scripts(), head_revision()) == BASELINE


def test_a_running_node_stops_taking_work_once_a_non_additive_upgrade_lands(tmp_path: Path) -> None:
    from node.store.compat import IncompatibleSchema

    url = f"sqlite:///{tmp_path / 'node.db'}"
    store = Store.open(url)
    store.schema_guard.interval = 0.0  # check at every claim
    assert store.claim_outbox("pacs", "test:1:x", 60) == []
    _from_the_future(tmp_path / "node.db", "0098_renames_a_column")
    with pytest.raises(IncompatibleSchema, match=r"0099_from_the_future.*0098_renames_a_column"):
        store.claim_outbox("pacs", "test:1:x", 60)
    with pytest.raises(IncompatibleSchema):
        store.claim_job(1, "test:1:x", 60)
    store.engine.dispose()


def _open_and_read(url: str) -> str | None:
    Store.open(url).engine.dispose()
    return revision_of(url)


def test_processes_opening_an_empty_database_at_once_all_find_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_open_and_read, [url] * 4) == [head_revision()] * 4
    assert shape(url)["outbox"]["indexes"]


def test_processes_opening_an_empty_postgresql_database_at_once_all_find_head(tmp_path: Path) -> None:
    """The advisory lock: one process migrates, the others wait and find head; the floor is recorded once."""
    from support.postgres import PostgresServer

    with PostgresServer() as pg:
        url = pg.create_database()
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            assert pool.map(_open_and_read, [url] * 4) == [head_revision()] * 4
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT revision, compatible_from FROM schema_compat")).all() == [
                    (head_revision(), BASELINE)]
            assert {t for t in inspect(engine).get_table_names()} >= set(metadata.tables)
        finally:
            engine.dispose()


def test_the_migrations_render_for_postgresql(tmp_path: Path) -> None:
    """No server needed: ``--sql`` (offline) mode writes the DDL a PostgreSQL database would get."""
    cfg = alembic_config()
    cfg.set_main_option("sqlalchemy.url", "postgresql://node@localhost/node")
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, "head", sql=True)
    ddl = cfg.output_buffer.getvalue()
    assert "CREATE TABLE IF NOT EXISTS outbox" in ddl and "BYTEA" in ddl and "SERIAL" in ddl
    assert f"INSERT INTO alembic_version (version_num) VALUES ('{BASELINE}')" in ddl


@pytest.mark.slow
def test_serve_upgrades_a_database_made_before_migrations_and_delivers_its_pending_result(tmp_path: Path) -> None:
    result = write_result(tmp_path / "results" / "sr.dcm")
    db = legacy_db(tmp_path / "var", result)
    with Storescp(tmp_path / "pacs") as pacs:
        cfg = node_config(tmp_path, endpoint_url="http://127.0.0.1:1/score", pacs=("PACS", pacs.port),
                          retention={"purge_delivered_after_hours": 1000000},
                          database={"url": f"sqlite:///{db}"})  # the SQLite file of an older node
        node = NodeProcess(tmp_path, cfg)
        try:
            node.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not pacs.received():
                time.sleep(0.2)
            time.sleep(1.0)  # a second send would land by now
            received = pacs.received()
        finally:
            node.stop()
        assert len(received) == 1, node.logs()
    assert str(pydicom.dcmread(received[0]).SOPInstanceUID) == RESULT_UID
    assert "adopting a database made before schema migrations" in node.logs()
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
        assert con.execute("SELECT state, destination FROM outbox").fetchall() == [("delivered", "pacs")]
    finally:
        con.close()
