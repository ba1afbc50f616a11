"""Rolling upgrade (issue 16, item 3): two nodes on one PostgreSQL, upgraded one at a time while studies arrive.

"The next version" is a copy of this code tree with one more real Alembic revision (what a release would ship),
run by the same ``dicom-node serve`` command from that folder:

* additive (a new nullable column, declared ``additive = True``): the first upgraded node migrates the shared
  database while the other, still the old code, keeps receiving and sending; then that one is upgraded too.
  Every result reaches the PACS exactly once, counted per C-STORE (dcmtk storescp, one file per C-STORE);
* non-additive (a NOT NULL column without default, which the old code's INSERTs cannot fill): once the new node
  migrates, the running old node stops taking work with an error naming both revisions (a C-STORE to it gets
  0xA700, nothing recorded; its worker takes no task from the shared queue, so the upgraded node decides every
  study while the old one still runs), and an old node started afterwards refuses to start with the same message.

The two nodes are a cluster as docs/cluster.md describes it: one PostgreSQL database, one Redis queue and one storage
folder, each node with its own ``instance_id`` and ports. Each also has its own AE title, so that every result the
PACS holds names the node that sent it (dcmtk's storescp writes the calling AE title into the file's meta header as
Source Application Entity Title): who sent what is read at the peer.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from node.store.migrate import head_revision
from support.data import REPO
from support.dcmtk import Storescp, storescu, transfer_syntax_flag
from support.nodekit import wait_until
from support.nodeproc import NodeProcess, node_config
from support.postgres import PostgresServer
from support.redis_server import RedisServer
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.slow]

CURRENT = head_revision()  # this tree's newest revision: the next release's revision goes on top of it
NEXT = "0006_next_release"
RESULTS_PER_STUDY = 2  # a chest X-ray study with the emulator's findings: one SR and one presentation state

_ADDITIVE = '''
def upgrade() -> None:
    """A nullable column: the previous version neither reads nor writes it."""
    op.add_column("jobs", sa.Column("upgrade_note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "upgrade_note")
'''
_BREAKING = '''
def upgrade() -> None:
    """A NOT NULL column without default (existing rows get 0): the previous version's INSERTs fail."""
    op.add_column("jobs", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.alter_column("jobs", "priority", server_default=None)


def downgrade() -> None:
    op.drop_column("jobs", "priority")
'''


def next_version(folder: Path, *, additive: bool) -> Path:
    """A copy of this code tree with revision NEXT added on top of CURRENT, and schema.py knowing its column."""
    for package in ("node", "converters", "dicom_out"):
        shutil.copytree(REPO / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    header = (f'"""The next release\'s schema change.\n\nRevision ID: {NEXT}\nRevises: {CURRENT}\n"""\n\n'
              "import sqlalchemy as sa\nfrom alembic import op\n\n"
              f"revision = {NEXT!r}\ndown_revision = {CURRENT!r}\nbranch_labels = None\ndepends_on = None\n"
              f"additive = {additive}\n")
    (folder / "node/store/migrations/versions" / f"{NEXT}.py").write_text(
        header + (_ADDITIVE if additive else _BREAKING))
    schema = folder / "node/store/schema.py"
    column = 'Column("upgrade_note", Text),' if additive else 'Column("priority", Integer, nullable=False, default=0),'
    source = schema.read_text()
    assert source.count('    Column("give_up_at", Float),\n') == 1
    schema.write_text(source.replace('    Column("give_up_at", Float),\n',
                                     f'    Column("give_up_at", Float),\n    {column}\n'))
    return folder


def _node(tmp: Path, name: str, db_url: str, emulator_url: str, pacs: Storescp, queue_url: str) -> NodeProcess:
    """A node of the cluster: its own config, log and ports; the shared database, queue and storage folder."""
    folder = tmp / name
    folder.mkdir()
    cfg = node_config(folder, endpoint_url=emulator_url, pacs=(pacs.ae_title, pacs.port), quiet=1.0,
                      database={"url": db_url}, queue={"url": queue_url})
    cfg["node"].update(instance_id=name, storage_dir=str(tmp / "shared"), ae_title=_ae(name))
    return NodeProcess(folder, cfg)


def _ae(name: str) -> str:
    """The AE title node ``name`` calls the PACS with: node-a -> AINODE_A."""
    return "AINODE_" + name.rsplit("-", 1)[-1].upper()


def _upgrade(node: NodeProcess, code: Path) -> None:
    """Stop ``node`` (SIGTERM: drains) and start it again on the same folder and database, running ``code``."""
    assert node.stop() == 0, node.logs()
    node.code_root = code
    node.start()


def _db(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def _store_statuses(node: NodeProcess, files: list[Path]) -> list[int | None]:
    """storescu each file to ``node``; the DIMSE status of each C-STORE response as dcmtk printed it (None: none)."""
    statuses: list[int | None] = []
    for f in files:
        out = storescu("127.0.0.1", node.port, [f], extra=[transfer_syntax_flag(f), "-d"], timeout=60)
        found = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", out.stdout + out.stderr)
        statuses.append(int(found[-1], 16) if found else None)
    return statuses


def _send_study(node: NodeProcess, files: list[Path]) -> bool:
    """storescu the study's files to ``node``; True when every C-STORE was answered Success."""
    for f in files:
        out = storescu("127.0.0.1", node.port, [f], extra=[transfer_syntax_flag(f), "-v"], timeout=60)
        if out.returncode != 0 or "Received Store Response (Success)" not in out.stdout + out.stderr:
            return False
    return True


class Load(threading.Thread):
    """Sends chest X-ray studies, alternating between the nodes; a study a node cannot take goes to the other."""

    def __init__(self, tmp: Path, data: Path, nodes: list[NodeProcess], pause: float) -> None:
        super().__init__(daemon=True)
        self.tmp, self.data, self.nodes, self.pause = tmp, data, nodes, pause
        self.accepted: dict[str, str] = {}  # study UID -> instance_id of the node that acknowledged it
        self.failures: list[str] = []
        # studies whose first attempt was refused part-way (a node stopping for its upgrade): the instances it
        # took may have been decided on their own before the rest arrived elsewhere, and the late ones then reopen
        # the study (a new version, new results): each result still reaches the PACS once, in more results
        self.resent: set[str] = set()
        self.done = threading.Event()  # set by the test: finish the study in hand, then stop

    def run(self) -> None:
        i = -1
        while not self.done.is_set():
            i += 1
            files = derive_cxr_study(self.tmp / f"study{i}", self.data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                                     self.data / "cxr" / "dx_lateral_thorax_veterinary.dcm",
                                     patient_id=f"ROLL-{i}")
            uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            order = [self.nodes[i % 2], self.nodes[(i + 1) % 2]]
            for attempt in range(20):  # both may be restarting for a moment: wait and try again
                node = order[attempt % 2]
                if _send_study(node, files):
                    self.accepted[uid] = node.config["node"]["instance_id"]
                    break
                self.resent.add(uid)
                time.sleep(0.5)
            else:
                self.failures.append(uid)
            time.sleep(self.pause)


def _senders(pacs: Storescp, files: list[Path] | None = None) -> Counter:
    """AE title of the sending node -> C-STOREs received from it at the PACS (of ``files``, default all)."""
    return Counter(str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.SourceApplicationEntityTitle).strip()
                   for f in (pacs.received() if files is None else files))


def _result_study_counts(pacs: Storescp) -> tuple[Counter, Counter]:
    """(SOP Instance UID -> C-STOREs received, Study Instance UID -> C-STOREs received) at the PACS."""
    by_sop: Counter = Counter()
    by_study: Counter = Counter()
    for f in pacs.received():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_sop[str(ds.SOPInstanceUID)] += 1
        by_study[str(ds.StudyInstanceUID)] += 1
    return by_sop, by_study


@pytest.mark.timeout(600)
def test_nodes_upgraded_one_at_a_time_under_load_deliver_every_result_once(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    code = next_version(tmp_path / "next", additive=True)
    with PostgresServer() as pg, RedisServer(tmp_path / "redis") as redis, \
            EmulatorServer("127.0.0.1", 0) as emulator, Storescp(tmp_path / "pacs") as pacs:
        url = pg.create_database()
        a = _node(tmp_path, "node-a", url, emulator.url, pacs, redis.url)
        b = _node(tmp_path, "node-b", url, emulator.url, pacs, redis.url)
        a.start()
        b.start()
        load = Load(tmp_path / "studies", data, [a, b], pause=0.3)
        try:
            load.start()
            wait_until(lambda: len(load.accepted) >= 3, 120, "the first studies")
            _upgrade(a, code)  # migrates the shared database to NEXT while b, the old code, keeps working
            assert _db(url, "SELECT version_num FROM alembic_version") == [(NEXT,)]
            upgraded_at = len(load.accepted)
            before = set(pacs.received())
            wait_until(lambda: len(load.accepted) >= upgraded_at + 4, 120, "studies after the first upgrade")
            on_old_b = [uid for uid, n in list(load.accepted.items())[upgraded_at:] if n == "node-b"]
            assert on_old_b, "the old node took studies after the schema upgrade"
            wait_until(lambda: all(_result_study_counts(pacs)[1][uid] >= RESULTS_PER_STUDY for uid in on_old_b),
                       120, "the results of the studies the old node acknowledged on the upgraded schema")
            # the old node keeps sending: results that reached the PACS from node-b's AE title, on the new schema
            wait_until(lambda: _senders(pacs, [f for f in pacs.received() if f not in before])[_ae("node-b")] >= 1,
                       120, "a result sent by the old node after the schema upgrade")
            _upgrade(b, code)
            upgraded_at = len(load.accepted)
            wait_until(lambda: len(load.accepted) >= upgraded_at + 3, 120, "studies after the second upgrade")
            load.done.set()
            load.join(timeout=300)
            assert not load.is_alive() and not load.failures, load.failures
            sent = set(load.accepted)
            wait_until(lambda: sum(_result_study_counts(pacs)[1][uid] for uid in sent)
                       >= RESULTS_PER_STUDY * len(sent), 240, "every study's results at the PACS")
            time.sleep(3)  # a second C-STORE of anything would land by now
            by_sop, by_study = _result_study_counts(pacs)
            logs = a.logs() + b.logs()
            compat_row = _db(url, "SELECT revision, compatible_from FROM schema_compat")
        finally:
            a.stop()
            b.stop()
    assert len(sent) >= 10
    whole = sent - load.resent
    assert {uid: by_study[uid] for uid in whole} == {uid: RESULTS_PER_STUDY for uid in whole}, "every result, once"
    assert all(by_study[uid] >= RESULTS_PER_STUDY and by_study[uid] % RESULTS_PER_STUDY == 0
               for uid in load.resent & sent), {uid: by_study[uid] for uid in load.resent & sent}
    assert len(whole) >= 8, f"too few studies sent whole: {len(whole)} of {len(sent)}"
    assert set(by_sop.values()) == {1}, [u for u, n in by_sop.items() if n > 1]
    assert f"database schema upgraded from {CURRENT} to {NEXT}" in logs
    assert "stops taking work" not in logs
    assert compat_row == [(NEXT, "0001_baseline")], "every revision after the baseline is additive"


def test_an_old_node_starting_on_an_additively_upgraded_database_runs_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from node.store.state import Store

    code = next_version(tmp_path / "next", additive=True)
    with PostgresServer() as pg:
        url = pg.create_database()
        new = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url="http://127.0.0.1:9/score", pacs=None,
                                                database={"url": url}))
        new.code_root = code
        new.start()
        new.stop()
        assert _db(url, "SELECT revision, compatible_from FROM schema_compat") == [(NEXT, "0001_baseline")]
        with caplog.at_level(logging.WARNING, logger="node.store.migrate"):
            store = Store.open(url)  # this tree's code: head CURRENT
        assert (f"the database is at schema revision {NEXT}, newer than this node's {CURRENT}, and compatible "
                f"from 0001_baseline") in caplog.text
        try:
            assert store.create_jobs("1.2.3", 1, [("r", "e", ["1.2.3.4"])])  # and it writes
        finally:
            store.engine.dispose()
        assert _db(url, "SELECT version_num FROM alembic_version") == [(NEXT,)]


@pytest.mark.timeout(600)
def test_a_non_additive_upgrade_stops_the_old_node_and_it_refuses_to_start_again(tmp_path: Path,
                                                                                  data: Path) -> None:
    from node.emulator.server import EmulatorServer

    code = next_version(tmp_path / "next", additive=False)
    study = lambda i: derive_cxr_study(tmp_path / f"study{i}", data / "cxr" / "cr_pa_jpeg_baseline.dcm",  # noqa: E731
                                       data / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id=f"BREAK-{i}")
    with PostgresServer() as pg, RedisServer(tmp_path / "redis") as redis, \
            EmulatorServer("127.0.0.1", 0) as emulator, Storescp(tmp_path / "pacs") as pacs:
        url = pg.create_database()
        a = _node(tmp_path, "node-a", url, emulator.url, pacs, redis.url)
        b = _node(tmp_path, "node-b", url, emulator.url, pacs, redis.url)
        a.start()
        b.start()
        try:
            assert _send_study(b, study(0))
            wait_until(lambda: len(pacs.received()) >= RESULTS_PER_STUDY, 120, "the old node's results")
            _upgrade(a, code)
            assert _db(url, "SELECT revision, compatible_from FROM schema_compat") == [(NEXT, NEXT)]
            time.sleep(6)  # past the old node's check interval (node.store.compat.CHECK_EVERY_SECONDS)
            before = set(pacs.received())
            refused = study(1)
            statuses = _store_statuses(b, refused)
            assert statuses == [0xA700] * len(refused), f"docs/internals.md: 0xA700 (Out of Resources): {statuses}"
            wait_until(lambda: "this node stops taking work" in b.logs(), 30, "the old node's error")
            assert _db(url, "SELECT count(*) FROM instances WHERE study_uid = '%s'"
                       % pydicom.dcmread(refused[0], stop_before_pixels=True).StudyInstanceUID) == [(0,)]
            # the upgraded node decides every study while the old one still runs (and still polls the shared queue)
            for i in (1, 2, 3):
                assert _send_study(a, study(i) if i > 1 else refused), f"the upgraded node takes study {i}"
            wait_until(lambda: len(pacs.received()) >= 4 * RESULTS_PER_STUDY, 120, "the new node's results")
            assert b.proc is not None and b.proc.poll() is None, "the old node still runs"
            after = [f for f in pacs.received() if f not in before]
            old_log = b.logs()
            b.stop()
            with pytest.raises(RuntimeError, match="node exited early") as failed:
                b.start()
        finally:
            a.stop()
            b.stop()
    message = str(failed.value)
    assert f"schema revision {NEXT!r}" in message and f"{NEXT!r} or newer" in message and repr(CURRENT) in message
    by_sop, by_study = _result_study_counts(pacs)
    assert len(by_sop) == 4 * RESULTS_PER_STUDY and set(by_sop.values()) == {1}
    assert len(by_study) == 4 and set(by_study.values()) == {RESULTS_PER_STUDY}, by_study
    assert _senders(pacs, after) == {_ae("node-a"): 3 * RESULTS_PER_STUDY}, "the refused node sends nothing more"
    assert "Unhandled exception in task" not in old_log, "the refused node's worker took shared tasks"
