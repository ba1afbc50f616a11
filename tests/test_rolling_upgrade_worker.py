"""An old node's worker once a newer node made the shared database unusable to it (issue 22, rolling upgrade).

The end-to-end run (two real nodes on PostgreSQL and Redis) is in tests/test_rolling_upgrade.py; here, quickly, on
the worker's own queue and store: a refused worker dequeues nothing (the tasks stay for the upgraded nodes), a task
it took just before the refusal is handed back untouched, and it closes no study (the old bug: it closed the study,
failed to create its jobs and dropped the task, again and again, so the study was never decided).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from node.config import parse_config
from node.flow.queue import Queue
from node.flow.services import Services
from node.flow.worker import bind_tasks, compatible
from node.store.state import InstanceRecord

STUDY = "1.2.826.0.1.3680043.10.511.22.1"


def _from_the_future(svc: Services) -> None:
    """What a newer node's non-additive upgrade leaves: an unknown revision whose floor this code does not know."""
    with svc.store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_from_the_future'")
        conn.exec_driver_sql("UPDATE schema_compat SET revision = '0099_from_the_future', "
                             "compatible_from = '0099_from_the_future'")


@pytest.fixture()
def svc(tmp_path: Path) -> Services:
    cfg = parse_config({
        "node": {"storage_dir": str(tmp_path / "var"), "instance_id": "old", "study_complete_after_seconds": 0.01},
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:9/score", "auth": "none"}},
        "destinations": {},
        "rules": [{"name": "r", "endpoint": "cxr"}],
    })
    services = Services.open(cfg)
    services.store.schema_guard.interval = 0.0  # read the database at every check
    services.store.record_instances([InstanceRecord(f"{STUDY}.1.1", STUDY, f"{STUDY}.1", "1.2", "1.2.840.10008.1.2.1",
                                                    str(tmp_path / "x.dcm"), 1, "CR")], quiet_seconds=0)
    bind_tasks(services)
    yield services
    services.store.engine.dispose()


def _study_state(svc: Services) -> str:
    with svc.store.engine.connect() as conn:
        return conn.execute(text("SELECT state FROM studies WHERE study_uid = :u"), {"u": STUDY}).scalar()


def test_a_refused_worker_dequeues_nothing_and_leaves_the_task_to_the_other_nodes(svc: Services) -> None:
    svc.queue.consume_only_while(lambda: compatible(svc))
    svc.queue.check_study(STUDY)
    assert svc.queue.huey.pending_count() == 1
    _from_the_future(svc)
    assert not compatible(svc)
    assert svc.queue.huey.dequeue() is None, "a refused worker must not take shared work"
    assert svc.queue.huey.pending_count() == 1, "the task stays in the queue for a node that can run it"
    # what an upgraded node (another consumer of the same queue) then takes: the very task, untouched
    other = Queue(svc.cfg)
    task = other.huey.dequeue()
    assert task is not None and task.name == "check_study" and task.args == (STUDY,)
    assert _study_state(svc) == "receiving"


def test_a_task_taken_just_before_the_refusal_is_handed_back_untouched(svc: Services) -> None:
    svc.queue.check_study(STUDY)
    task = svc.queue.huey.dequeue()  # taken while the schema was still fine
    assert task is not None
    _from_the_future(svc)
    svc.queue.huey.execute(task)  # the body meets the refusal at its first store write
    assert _study_state(svc) == "receiving", "the old node must not close a study it cannot create jobs for"
    again = Queue(svc.cfg).huey.dequeue()
    assert again is not None and again.name == "check_study" and again.args == (STUDY,), "handed back"

