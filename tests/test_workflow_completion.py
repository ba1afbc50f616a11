"""Study completion in one process: the triggers' precedence on a real database (node/flow/completion.py), the MPPS and
IAN SCP over a real pynetdicom association (node/dicom/notices.py), what the receive path pays, the rule tester's
preview, the configuration's errors. The end-to-end tests with real processes are test_workflow_completion_e2e.py."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import event

from node.config import ConfigError, parse_config
from node.flow.intake import Intake
from node.store.state import InstanceRecord, Store
from node.store.workflow import Ref
from support.modality import ian, instance_refs, mpps_create, mpps_set
from support.ports import free_port
from support.studies import derive_cxr_study

pytestmark = pytest.mark.engine

CHEST = {"name": "chest", "match": {"Modality": ["CR", "DX"]}, "endpoint": "cxr"}
PA_LL = {"series": [{"match": {"ViewPosition": "PA"}}, {"match": {"ViewPosition": "LL"}}]}


def config(tmp: Path, quiet: float = 0.3, max_wait: float = 0.8, rules: list | None = None, **node) -> object:
    return parse_config({
        "node": {"storage_dir": str(tmp / "var"), "study_complete_after_seconds": quiet,
                 "study_complete_max_wait_seconds": max_wait, "port": free_port(), "host": "127.0.0.1",
                 "min_free_disk_mb": 0, **node},
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}},
        "rules": rules if rules is not None else [CHEST]})


def record(intake: Intake, study: str, sop: str, path: str = "/nonexistent") -> list[tuple[str, float]]:
    return intake.record([InstanceRecord(sop, study, study + ".1", "1.2.840.10008.5.1.4.1.1.1",
                                         "1.2.840.10008.1.2.1", path, 1, "MODALITY")])


def wait_outcome(intake: Intake, study: str, timeout: float = 5.0):
    """Check the study until a trigger decides it (as its armed checks would)."""
    deadline = time.monotonic() + timeout
    while True:
        out = intake.begin_decision(study)
        if out.kind != "wait" or time.monotonic() > deadline:
            return out
        time.sleep(max(0.0, min(0.05, out.due - time.time())))


@pytest.fixture
def node(tmp_path: Path):
    def make(**kw):
        cfg = config(tmp_path, **kw)
        store = Store.open(cfg.database_url)
        return cfg, store, Intake(cfg, store, None)
    return make


def test_the_timer_decides_a_study_nothing_else_knows_and_says_so(node) -> None:
    _, store, intake = node()
    record(intake, "1.1", "1.1.1.1")
    assert intake.begin_decision("1.1").kind == "wait"
    out = wait_outcome(intake, "1.1")
    assert (out.kind, out.trigger) == ("complete", "timer") and out.latency >= 0.3
    assert [(d["version"], d["trigger"]) for d in store.decisions_of("1.1")] == [(1, "timer")]


def test_an_mpps_completed_before_its_last_instance_decides_when_that_instance_arrives(node) -> None:
    _, store, intake = node(accept_mpps=True)
    store.create_notice("mpps", "9.1", ["1.2"], "IN PROGRESS", "MOD", None, [])
    first = record(intake, "1.2", "1.2.1.1")
    assert first and first[0][1] <= time.time(), "a new study is checked at once when a trigger is configured"
    watched = store.set_mpps("9.1", "COMPLETED", "{}", ["1.2"], [Ref("1.2.1.1"), Ref("1.2.1.2")])
    assert watched == ["1.2"]
    time.sleep(0.5)  # past the quiet time: the MPPS holds the study
    assert intake.begin_decision("1.2").kind == "wait"
    due = record(intake, "1.2", "1.2.1.2")
    assert due and due[0][1] <= time.time(), "an instance of a watched study schedules its check at once"
    out = intake.begin_decision("1.2")
    assert (out.kind, out.trigger) == ("complete", "mpps") and out.latency < 0.5, out


def test_an_mpps_in_progress_holds_the_study_until_the_maximum_wait(node) -> None:
    _, store, intake = node(accept_mpps=True)
    store.create_notice("mpps", "9.2", ["1.3"], "IN PROGRESS", "MOD", None, [])
    record(intake, "1.3", "1.3.1.1")
    time.sleep(0.5)
    assert intake.begin_decision("1.3").kind == "wait", "the quiet time passed, the MPPS still holds it"
    out = wait_outcome(intake, "1.3")
    assert (out.trigger, out.latency >= 0.8) == ("max_wait", True) and "in progress" in out.detail


def test_every_mpps_of_a_study_counts(node) -> None:
    _, store, intake = node(accept_mpps=True, max_wait=30)
    store.create_notice("mpps", "9.3", ["1.4"], "IN PROGRESS", "MOD", None, [])
    store.create_notice("mpps", "9.4", ["1.4"], "IN PROGRESS", "MOD", None, [])
    record(intake, "1.4", "1.4.1.1")
    store.set_mpps("9.3", "COMPLETED", "{}", ["1.4"], [Ref("1.4.1.1")])
    assert intake.begin_decision("1.4").kind == "wait", "the second procedure step is still in progress"
    store.set_mpps("9.4", "DISCONTINUED", "{}", ["1.4"], [])
    out = intake.begin_decision("1.4")
    assert (out.trigger, out.discontinued) == ("mpps", True)


def test_an_ian_closes_its_study_once_the_listed_instances_are_in(node) -> None:
    _, store, intake = node(accept_ian=True, max_wait=30)
    store.create_notice("ian", "8.1", ["1.5"], "AVAILABLE", "PACS", None, [Ref("1.5.1.1"), Ref("1.5.1.2")])
    record(intake, "1.5", "1.5.1.1")
    time.sleep(0.4)
    assert intake.begin_decision("1.5").kind == "wait"
    record(intake, "1.5", "1.5.1.2")
    assert intake.begin_decision("1.5").trigger == "ian"


def _cxr(tmp: Path, data: Path) -> list[Path]:
    return derive_cxr_study(tmp / "cxr", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                            data / "cxr" / "dx_lateral_thorax_veterinary.dcm")


def _record_file(intake: Intake, f: Path) -> list[tuple[str, float]]:
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    return intake.record([InstanceRecord(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                         str(ds.SOPClassUID), "1.2.840.10008.1.2.1", str(f), 1, "MODALITY")])


def test_expected_content_decides_at_once_only_when_every_matching_rule_has_it(node, tmp_path: Path,
                                                                               data: Path) -> None:
    pa, ll = _cxr(tmp_path, data)
    study = str(pydicom.dcmread(pa, stop_before_pixels=True).StudyInstanceUID)
    _, store, intake = node(quiet=30, rules=[{**CHEST, "complete_when": PA_LL}])
    _record_file(intake, pa)
    assert intake.begin_decision(study).kind == "wait"
    assert store.study(study)["check_due_at"] is None, "watched: the next instance may complete it"
    _record_file(intake, ll)
    out = intake.begin_decision(study)
    assert (out.kind, out.trigger) == ("complete", "expected"), out

    other = tmp_path / "other"
    _, store2, intake2 = node(quiet=30, rules=[{**CHEST, "complete_when": PA_LL},
                                               {**CHEST, "name": "all-cr"}], storage_dir=str(other))
    for f in (pa, ll):
        _record_file(intake2, f)
    out = intake2.begin_decision(study)
    assert out.kind == "wait" and store2.study(study)["check_due_at"] is not None, \
        "a matching rule without complete_when leaves the study to the timer"


def test_the_receive_path_pays_nothing_for_a_study_no_trigger_watches(tmp_path: Path) -> None:
    """The same statements per instance with every trigger configured as with none, for a study that has no MPPS
    or IAN and no rule with expected content; a watched study pays the read-then-write branch."""
    def statements(tmp: Path, study: str, **node_keys) -> list[list[str]]:
        cfg = config(tmp, quiet=30, rules=[{**CHEST, "match": {"Modality": "MR"}, "complete_when": PA_LL}]
                     if node_keys else [CHEST], **node_keys)
        store = Store.open(cfg.database_url)
        intake = Intake(cfg, store, None)
        record(intake, study, f"{study}.9")
        intake.begin_decision(study)  # its first check (at once when triggers are on), as the armed check runs it
        counts = []
        for i in range(3):
            seen: list[str] = []
            listener = lambda *a: seen.append(a[2])  # noqa: E731
            event.listen(store.engine, "before_cursor_execute", listener)
            record(intake, study, f"{study}.{i}")
            event.remove(store.engine, "before_cursor_execute", listener)
            counts.append(seen)
        return counts

    plain = statements(tmp_path / "a", "2.1")
    triggered = statements(tmp_path / "b", "2.1", accept_mpps=True, accept_ian=True)
    assert triggered == plain
    # (the statement on the study, wherever it comes: SQLite's BEGIN IMMEDIATE comes first, PostgreSQL has none)
    assert all(sum("studies" in st for st in one) == 1
               and next(st for st in one if "studies" in st).startswith("UPDATE studies") for one in triggered), \
        f"one statement on the study per instance (the common case's UPDATE): {triggered}"
    cfg = config(tmp_path / "c", quiet=30, accept_mpps=True)
    store = Store.open(cfg.database_url)
    intake = Intake(cfg, store, None)
    store.create_notice("mpps", "9.9", ["2.2"], "COMPLETED", "MOD", None, [Ref("2.2.8")])
    record(intake, "2.2", "2.2.1")
    intake.begin_decision("2.2")
    seen = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    record(intake, "2.2", "2.2.2")
    assert len(seen) > len(plain[0]), "a watched study takes the read-then-write branch"


def test_the_mpps_and_ian_scp_record_before_answering_and_refuse_what_the_standard_refuses(tmp_path: Path,
                                                                                             data: Path) -> None:
    from node.dicom.scp import StorageSCP
    from node.store.spool import Spool

    cfg = config(tmp_path, quiet=30, accept_mpps=True, accept_ian=True)
    store = Store.open(cfg.database_url)
    spool = Spool(cfg.storage_dir)
    spool.create()
    armed: list[str] = []

    class Arming(Intake):
        def arm(self, study_uid, due_at):
            armed.append(study_uid)

    scp = StorageSCP(cfg, store, spool, Arming(cfg, store, None))
    scp.start()
    try:
        port = scp.port
        pa, ll = _cxr(tmp_path, data)
        study = str(pydicom.dcmread(pa, stop_before_pixels=True).StudyInstanceUID)
        uid = generate_uid()
        assert mpps_create(port, uid, study) == 0x0000
        assert store.mpps(uid)["state"] == "IN PROGRESS", "recorded before the answer"
        assert mpps_create(port, uid, study) == 0x0111, "duplicate SOP instance"
        assert mpps_create(port, generate_uid(), study, status="COMPLETED") == 0x0106, "N-CREATE must be IN PROGRESS"
        assert mpps_create(port, generate_uid(), "not-a-uid") == 0x0120, "no valid Study Instance UID"
        assert mpps_create(port, "", study, pass_uid=False) == 0x0000, "the SCP gives the UID the SCU left out"
        assert mpps_set(port, generate_uid(), "COMPLETED", []) == 0x0112, "no such MPPS"
        assert mpps_set(port, uid, "FINISHED", []) == 0x0106, "not a Performed Procedure Step Status"
        assert mpps_set(port, uid, "COMPLETED", instance_refs([pa, ll])) == 0x0000
        assert armed == [study], "a final MPPS arms its study's check at once"
        got = store.mpps(uid)
        assert got["state"] == "COMPLETED" and got["study_uids"] == [study]
        merged = pydicom.Dataset.from_json(got["dataset"])
        assert merged.PerformedProcedureStepStartTime == "101500", "the N-CREATE's attributes stay"
        assert len(merged.PerformedSeriesSequence) == 2, "the N-SET's sequence replaced the empty one"
        assert mpps_set(port, uid, "DISCONTINUED", []) == 0x0110, "a final MPPS may no longer be updated"
        lost = generate_uid()
        assert ian(port, study, [*instance_refs([pa]), ("1.2.840.10008.5.1.4.1.1.1", lost, "1.2.3")],
                   unavailable=[lost]) == 0x0000
        notices = {n["uid"] if n["kind"] == "mpps" else "ian": n for n in store.notices_of(study)}
        assert notices["ian"]["listed"] == 1, "an instance marked UNAVAILABLE is not waited for"
        assert notices[uid]["listed"] == 2 and notices[uid]["missing"] == 2
    finally:
        scp.stop(1)


def test_a_discontinued_mpps_skips_the_rules_that_say_so_and_counts_the_trigger(tmp_path: Path, data: Path) -> None:
    from node.flow.decide import check_study
    from node.flow.services import Services
    from node.ops import metrics

    pa, ll = _cxr(tmp_path, data)
    study = str(pydicom.dcmread(pa, stop_before_pixels=True).StudyInstanceUID)
    cfg = config(tmp_path, quiet=30, accept_mpps=True,
                 rules=[{**CHEST, "on_discontinued": "skip"}, {**CHEST, "name": "runs-anyway"}])
    svc = Services.open(cfg)
    for f in (pa, ll):
        _record_file(svc.intake, f)
    svc.store.create_notice("mpps", "9.5", [study], "DISCONTINUED", "MOD", None,
                            [Ref(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)) for f in (pa, ll)])
    before = metrics.DECISIONS.labels("mpps")._value.get()
    check_study(svc, study)
    jobs = {j["rule_name"]: j for j in svc.store.summary()["recent_jobs"]}
    assert jobs["chest"]["state"] == "skipped" and "DISCONTINUED" in jobs["chest"]["outcome"]
    assert jobs["runs-anyway"]["state"] == "pending"
    assert metrics.DECISIONS.labels("mpps")._value.get() == before + 1
    check_study(svc, study)  # checked again: decided once
    assert len(svc.store.decisions_of(study)) == 1

    from starlette.testclient import TestClient

    from node.http.app import build_app

    page = TestClient(build_app(cfg)).get(f"/studies/{study}").text
    assert '<td class="trigger">mpps</td>' in page and "(MPPS DISCONTINUED)" in page
    assert "MPPS 9.5 from MOD: DISCONTINUED, 2 instance(s) listed, 0 not received" in page, "the timeline"


def test_the_rule_tester_says_which_trigger_fires_and_at_which_instance(tmp_path: Path, data: Path) -> None:
    from node.flow.ruletest import run_rule_test

    pa, ll = _cxr(tmp_path, data)
    extra = tmp_path / "cxr" / "03_extra.dcm"
    ds = pydicom.dcmread(pa)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(extra, enforce_file_format=True)
    cfg = config(tmp_path, quiet=10, rules=[{**CHEST, "complete_when": PA_LL}], accept_mpps=True)
    done = run_rule_test(cfg, [tmp_path / "cxr"])["studies"][0]["completion"]
    assert "expected, at instance 2 of 3" in done["would_fire"] and "02_lateral.dcm" in " ".join(done["triggers"])
    assert "1 instance(s) after it would re-open" in done["warning"]
    assert any(t.startswith("mpps: a COMPLETED MPPS") for t in done["triggers"])
    plain = run_rule_test(config(tmp_path, quiet=10), [pa, ll])["studies"][0]["completion"]
    assert plain["would_fire"] == "timer: 10 s after the last instance" and "warning" not in plain


def test_configuration_errors_name_the_key() -> None:
    base = {"endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}}}
    cases = [
        ({**base, "rules": [{**CHEST, "complete_when": {}}]}, "rules[0].complete_when: complete_when needs"),
        ({**base, "rules": [{**CHEST, "complete_when": {"series": [{"match": {"ViewPos": "PA"}}]}}]},
         "complete_when.series[0].match: match key 'ViewPos' is not a DICOM keyword"),
        ({**base, "rules": [{**CHEST, "on_discontinued": "maybe"}]}, "rules[0].on_discontinued: allowed"),
        ({**base, "node": {"study_complete_max_wait_seconds": 0}}, "node.study_complete_max_wait_seconds"),
        ({**base, "rules": [CHEST], "sources": [{"type": "ups-rs", "url": "http://x/v2",
                                                 "workitems": [{"code": "A", "rule": "nope"}]}]},
         "sources[0].workitems[0].rule: unknown rule 'nope'"),
        ({**base, "rules": [CHEST], "sources": [{"type": "ups-rs", "url": "http://x/v2", "inputs": "c-move",
                                                 "workitems": [{"code": "A", "rule": "chest"}]}]},
         "needs retrieve_from"),
    ]
    for doc, wanted in cases:
        with pytest.raises(ConfigError) as err:
            parse_config(doc, "node.yaml")
        assert wanted in str(err.value) and str(err.value).startswith("node.yaml: "), str(err.value)
