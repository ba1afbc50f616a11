"""Helpers shared by the end-to-end, fault, bad-input and load tests that drive a real ``dicom-node serve``.

``send`` pushes files with dcmtk's storescu (one association per call); ``status_json`` reads
``dicom-node status --json``; ``db_rows`` counts rows of the node's database from the test process (SQLite
WAL or PostgreSQL: reading is safe while the node writes); ``pacs_uids_by_study`` counts what a real Orthanc holds per
study. The studies to send come from ``support.studies``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pydicom

from .dcmtk import storescu, transfer_syntax_flag
from .nodeproc import NodeProcess


def send(node: NodeProcess, files: list[Path]) -> None:
    """storescu each file to the node (its own transfer syntax proposed); fail on any non-zero exit."""
    for f in files:
        proc = storescu("127.0.0.1", node.port, [f], extra=[transfer_syntax_flag(f)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def status_json(node: NodeProcess) -> dict[str, Any]:
    """``dicom-node status --json --limit 500`` of the node's configuration."""
    out = subprocess.run([sys.executable, "-m", "node.cli", "status", "--json", "--limit", "500", "--config",
                          str(node.config_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def db_path(node: NodeProcess) -> Path:
    return Path(node.config["node"]["storage_dir"]) / "node.db"


def db_url(node: NodeProcess) -> str:
    """The SQLAlchemy URL of the node's database (its ``database.url``, else the SQLite file in storage_dir)."""
    return (node.config.get("database") or {}).get("url") or f"sqlite:///{db_path(node)}"


def db_rows(node: NodeProcess, sql: str, *args: Any) -> list[tuple]:
    """Rows of a read-only query on the node's database; ``?`` marks the parameters (SQLite style) on both engines."""
    url = db_url(node)
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(f"file:{url[len('sqlite:///'):]}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database,
                         autocommit=True) as pg:
        # psycopg's placeholder is %s; a literal % (LIKE 'x%') is written %% there.
        return [tuple(r) for r in pg.execute(sql.replace("%", "%%").replace("?", "%s"), args).fetchall()]


def stored_sop_uids(node: NodeProcess) -> set[str]:
    """SOP Instance UIDs the node's database holds as received instances."""
    return {r[0] for r in db_rows(node, "SELECT sop_instance_uid FROM instances")}


def spool_files(node: NodeProcess) -> list[Path]:
    return sorted((Path(node.config["node"]["storage_dir"]) / "spool").rglob("*.dcm"))


def sop_uids(files: list[Path]) -> list[str]:
    """The SOP Instance UIDs of the files a test sent, read from the files themselves."""
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def held_sop_uids(node: NodeProcess, study_uid: str | None = None) -> list[str]:
    """The SOP Instance UIDs of the node's instance rows (of one study), sorted: compare with :func:`sop_uids`."""
    if study_uid is None:
        return sorted(r[0] for r in db_rows(node, "SELECT sop_instance_uid FROM instances"))
    return sorted(r[0] for r in db_rows(node, "SELECT sop_instance_uid FROM instances WHERE study_uid = ?",
                                        study_uid))


def spool_sop_counts(node: NodeProcess) -> Counter:
    """SOP Instance UID -> how many files of the spool hold it (read from the files, not the database)."""
    return Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in spool_files(node))


def pacs_uids_by_study(pacs) -> Counter:
    """How many distinct result instances a real Orthanc holds per StudyInstanceUID."""
    counts: Counter = Counter()
    for item in pacs.client.get("/instances", params={"expand": ""}).json():
        parent = pacs.client.get(f"/instances/{item['ID']}/study").json()
        counts[parent["MainDicomTags"]["StudyInstanceUID"]] += 1
    return counts


def orthanc_sop_uids(pacs) -> list[str]:
    """Every SOP Instance UID Orthanc stores (a list: a duplicate would show twice)."""
    return list(pacs.sop_instance_uids())


def study_uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
