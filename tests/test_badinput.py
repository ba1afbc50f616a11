"""Bad input end to end: the corpus of ``tests/badinput/make_corpus.py`` plus ``../shared/data/bad/`` and the
CT series with empty UIDs, sent to a running node at the same time as a good chest X-ray study.

Every bad case ends clearly -- quarantined with the reason, or its job failed/skipped with the reason, or
(for an honestly labelled non-image) no rule matched -- and is visible in ``dicom-node status``; the node does
not crash, sends no result for a bad study, and the good study's SR and GSPS reach Orthanc meanwhile.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.presentation import build_context

from badinput.make_corpus import Case, build_corpus
from support.nodekit import db_rows, pacs_uids_by_study, send, status_json, study_uid_of, wait_until
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.badinput, pytest.mark.slow]


def send_raw(port: int, files: list[Path]) -> list[int | None]:
    """C-STORE each file's bytes as they are (pynetdicom streams a file path without decoding it)."""
    metas = [pydicom.dcmread(f, stop_before_pixels=True).file_meta for f in files]
    contexts = {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}
    ae = AE(ae_title="BADSENDER")
    assoc = ae.associate("127.0.0.1", port, contexts=[build_context(a, t) for a, t in sorted(contexts)],
                         ae_title="AINODE")
    assert assoc.is_established, "the node refused the association"
    statuses: list[int | None] = []
    try:
        for f in files:
            if not assoc.is_established:  # the node aborted the association
                statuses.append(None)
                continue
            rsp = assoc.send_c_store(f)
            statuses.append(int(rsp.Status) if rsp is not None and "Status" in rsp else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


class Env:
    def __init__(self, tmp: Path, data: Path, cases: list[Case], good: list[Path], node: NodeProcess, pacs: Orthanc,
                 statuses: dict[str, list[int | None]]) -> None:
        self.tmp, self.data, self.cases, self.good, self.node, self.pacs = tmp, data, cases, good, node, pacs
        self.statuses = statuses


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[Env]:
    from node.emulator.server import EmulatorServer

    tmp = tmp_path_factory.mktemp("badinput")
    cases = build_corpus(tmp / "corpus", data)
    good = derive_cxr_study(tmp / "good", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                            data / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id="GOOD-1")
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp / "orthanc") as pacs:
        node = NodeProcess(tmp, node_config(tmp, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port)))
        node.start()
        statuses: dict[str, list[int | None]] = {}
        errors: list[BaseException] = []

        def run(case: Case) -> None:
            try:
                statuses[case.name] = send_raw(node.port, case.files)
            except BaseException as exc:  # reported by the test, not lost in a thread
                errors.append(exc)

        try:
            # 8 senders at a time (the node accepts 16 associations by default), the good study meanwhile
            pool = ThreadPoolExecutor(max_workers=8)
            futures = [pool.submit(run, c) for c in cases]
            send(node, good)
            for f in futures:
                f.result(timeout=180)
            pool.shutdown()
            assert not errors, errors
            yield Env(tmp, data, cases, good, node, pacs, statuses)
        finally:
            node.stop()


def _outcome(status: dict, case: Case, meta_uids: list[str]) -> tuple[str, str]:
    quarantined = [q for q in status["quarantine"] if q["sop_instance_uid"] in meta_uids]
    if quarantined:
        return "quarantine", " | ".join(q["reason"] for q in quarantined)
    jobs = [j for j in status["recent_jobs"] if j["study_uid"] == case.study_uid]
    study = next((s for s in status["recent_studies"] if s["study_uid"] == case.study_uid), None)
    if jobs and jobs[0]["state"] in ("failed", "skipped", "done"):
        return jobs[0]["state"], jobs[0]["outcome"] or ""
    if study is not None and study["state"] == "done" and not jobs:
        return "no_rule", study["note"] or ""
    return "open", f"study {study and study['state']}, jobs {[(j['state'], j['outcome']) for j in jobs]}"


def test_good_study_is_served_while_the_bad_ones_arrive(env: Env) -> None:
    uid = study_uid_of(env.good[0])
    wait_until(lambda: pacs_uids_by_study(env.pacs).get(uid) == 2, 120, "the good study's SR and GSPS")
    assert env.node.proc.poll() is None, "the node must not crash"


@pytest.mark.parametrize("name", [
    "truncated_header", "truncated_pixels", "undecodable_pixels", "wrong_vr_rows", "wrong_vr_modality",
    "empty_study_uid", "duplicate_sop_uid", "huge_rows_columns", "zero_rows_columns", "structured_report",
    "pdf_labelled_dx", "mixed_patients", "shared_mr_truncated_pixeldata",
    "shared_mr_12bit_jpeg_extended_undecodable", "shared_bad_sequence_original",
    "shared_mr_truncated_pixeldata_original", "shared_mr_12bit_jpeg_extended_undecodable_original",
    "shared_ct_empty_uids"])
def test_bad_input_ends_clearly(env: Env, name: str) -> None:
    case = next(c for c in env.cases if c.name == name)
    # the sender puts the data set's SOP Instance UID in the request; the quarantine records that one
    meta_uids = [str(pydicom.dcmread(f, stop_before_pixels=True).get("SOPInstanceUID", "")) for f in case.files]
    statuses = env.statuses[name]
    if case.expect == "aborted":
        assert statuses == [None] * len(case.files), statuses
        assert db_rows(env.node, "SELECT count(*) FROM instances WHERE sop_instance_uid = ''") == [(0,)]
        assert env.node.proc.poll() is None, "the node must not crash"
        return
    assert None not in statuses, f"every instance gets a C-STORE status, got {statuses}"
    state, reason = wait_until(lambda: (o := _outcome(status_json(env.node), case, meta_uids))[0] != "open" and o,
                               90, f"{name} to end")
    print(f"\n{name}: {state}: {reason[:160]}")
    expected = "done" if case.expect == "one_instance" else case.expect
    assert state == expected, (state, reason)
    if case.expect == "quarantine":
        assert all(s != 0x0000 for s in statuses), "a quarantined instance must not be acknowledged as stored"
        quarantined = [q for q in status_json(env.node)["quarantine"] if q["sop_instance_uid"] in meta_uids]
        assert len(quarantined) == len(case.files)
        assert all(Path(q["path"]).exists() for q in quarantined), "the quarantined file is kept"
    else:
        assert all(s == 0x0000 for s in statuses), statuses
    if case.expect in ("failed", "skipped", "quarantine"):
        assert reason.strip(), "the reason must be stated"
        assert case.words in reason, (case.words, reason)
        assert reason[:40] in env.node.status(), "the reason is visible in dicom-node status"
        assert case.study_uid not in pacs_uids_by_study(env.pacs), "no result for a bad study"
    if case.expect == "no_rule":
        assert "no rule matched" in reason
    if case.expect == "one_instance":
        rows = db_rows(env.node, "SELECT sop_instance_uid FROM instances WHERE study_uid = ?", case.study_uid)
        assert [r[0] for r in rows] == case.sop_uids, rows
        wait_until(lambda: pacs_uids_by_study(env.pacs).get(case.study_uid) == 2, 60, "one SR + GSPS")
