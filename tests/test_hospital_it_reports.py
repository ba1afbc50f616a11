"""The neutral reading of the node's own results (node/reports) and the ORU^R01 built from it (node/hl7/oru).

Expected values come from the writers' inputs (tests/support/reports.py): the sentences given to the SR writer,
the probabilities given to the classification writer, the segment specs given to the SEG writer, the order
attributes put in the source header. Every ORU is parsed under hl7apy STRICT validation and by python-hl7.
"""

from __future__ import annotations

import time
from pathlib import Path

import hl7
import pytest
from hl7apy import parser
from hl7apy.consts import VALIDATION_LEVEL

from dicom_out.finding_codes import finding_code
from node.config import parse_config
from node.hl7.oru import build_oru, control_id
from node.reports.job import build_report, retraction_of
from node.reports.read import read_results
from support import reports

pytestmark = pytest.mark.nodb

JOB = {"id": 1, "job_uid": "a" * 32, "study_uid": "1.2.3", "rule_name": "chest", "study_version": 1}


def hl7_dest(**keys):
    return parse_config({"destinations": {"ris": {"type": "hl7v2", "host": "127.0.0.1", "port": 2575,
                                                  "receiving_application": "RIS", **keys}}}).destinations["ris"]


def parse_both(data: bytes, codec: str) -> hl7.Message:
    text = data.decode(codec)
    msg = parser.parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    msg.validate()
    return hl7.parse(text)


def rows(msg: hl7.Message) -> list[tuple[str, str, str, list[str], str]]:
    return [(str(s[2]), str(s[3][0][0]), str(s[4]), [msg.unescape(str(r)) for r in s[5]], str(s[11]))
            for s in msg.segments("OBX")]


def test_report_sr_reads_every_sentence_in_the_models_order(data: Path) -> None:
    made = reports.cxr_report(data)
    content = read_results(made.results, made.source)
    assert [f.text for f in content.findings] == [f.text for f in reports.FINDINGS]
    for f, given in zip(content.findings, reports.FINDINGS):
        want = finding_code(given.text)
        assert (f.code.value, f.code.scheme) == (want.value, want.scheme_designator)
        assert f.regions == len(given.boxes)
    assert len({f.uid for f in content.findings}) == len(reports.FINDINGS)
    assert (content.algorithm.name, content.algorithm.version) == (reports.CXR.name, reports.CXR.version)
    study = content.study
    assert (study.accession, study.placer_order, study.filler_order) == ("ACC-7781", "PLC-5501", "FIL-9902")
    assert study.procedure.value == "36643-5"
    assert (content.patient.id, content.patient.issuer, content.patient.name) == ("PAT-0042", "HOSP", "Müller^Anna^B")


def test_classification_and_segmentation_read(data: Path) -> None:
    labels = read_results(reports.classification(data).results).labels
    assert len(labels) == 2
    first = {s.label.meaning: s.probability for s in labels[0].scores}
    assert first == pytest.approx(reports.PROBABILITIES["view"], abs=1e-6)
    assert [w[1].meaning for w in labels[0].winners] == ["x-ray chest posteroanterior"]
    assert [w[1].meaning for w in labels[1].winners] == ["x-ray chest lateral"]
    segs = read_results(reports.ct_segmentation(data).results).segments
    assert [(s.label, s.type.value, s.category.value) for s in segs] == [
        (spec.label, spec.property_type.value, spec.category.value) for spec in reports.SEGMENTS]


def test_oru_of_a_chest_report_field_by_field(data: Path) -> None:
    made = reports.cxr_report(data)
    report = build_report(job=JOB, content=read_results(made.results, made.source), previous=None)
    oru = build_oru(report, hl7_dest(sending_facility="RAD1"))
    assert oru.charset == "8859/1" and oru.control_id == control_id(report.uid) and len(oru.control_id) == 20
    msg = parse_both(oru.data, "latin_1")
    msh = msg.segment("MSH")
    assert (str(msh[3]), str(msh[4]), str(msh[5]), str(msh[9]), str(msh[10]), str(msh[12]), str(msh[18])) == (
        "DICOM_AI_NODE", "RAD1", "RIS", "ORU^R01^ORU_R01", oru.control_id, "2.5.1", "8859/1")
    pid = msg.segment("PID")
    assert str(pid[3]) == "PAT-0042^^^HOSP^MR" and msg.unescape(str(pid[5])) == "Müller^Anna^B"
    orc, obr = msg.segment("ORC"), msg.segment("OBR")
    assert (str(orc[1]), str(orc[2]), str(orc[3]), str(orc[5])) == ("SC", "PLC-5501", "FIL-9902", "CM")
    assert str(obr[4]) == "36643-5^XR Chest 2 Views^LN"
    assert str(obr[7]).startswith(str(made.source.StudyDate))
    assert (str(obr[18]), str(obr[24]), str(obr[25])) == ("ACC-7781", "RAD", "P")
    got = rows(msg)
    assert got[0] == ("HD", "113014", "", [str(made.source.StudyInstanceUID)], "P")
    texts = [r[3][0] for r in got if r[1] == "18782-3"]
    assert texts == [f.text for f in reports.FINDINGS]  # the delimiters in finding 3 survive escaping
    coded = [(r[2], r[3][0].split("^")[0]) for r in got if r[0] == "CWE"]
    assert coded == [(str(i), finding_code(f.text).value) for i, f in enumerate(reports.FINDINGS, start=1)]
    assert ("ST", "111001", "", [reports.CXR.name], "P") in got and ("ST", "111003", "", [reports.CXR.version], "P") in got
    assert any(r[1] == "AINOTE" and "not reviewed" in r[3][0] for r in got)
    assert {r[4] for r in got} == {"P"}
    assert build_oru(report, hl7_dest(sending_facility="RAD1")).data == oru.data  # a resend is byte-identical


@pytest.mark.parametrize("kind", ["classification", "ct_segmentation"])
def test_oru_of_labels_and_segments(data: Path, kind: str) -> None:
    made = getattr(reports, kind)(data)
    report = build_report(job=JOB, content=read_results(made.results, made.source), previous=None)
    got = rows(parse_both(build_oru(report, hl7_dest()).data, "latin_1"))
    if kind == "classification":
        nm = [(r[1], float(r[3][0])) for r in got if r[0] == "NM" and r[2] == "1"]
        assert sorted(p for _, p in nm) == sorted(reports.PROBABILITIES["view"].values())
        winners = [r[3][0].split("^")[1] for r in got if r[0] == "CWE"]
        assert winners == ["x-ray chest posteroanterior", "x-ray chest lateral"]
    else:
        cwe = [(r[1], r[3][0].split("^")[0]) for r in got if r[0] == "CWE"]
        assert cwe == [(s.category.value, s.property_type.value) for s in reports.SEGMENTS]


def test_correction_and_retraction_statuses(data: Path) -> None:
    made = reports.cxr_report(data)
    content = read_results(made.results, made.source)
    first = build_report(job=JOB, content=content, previous=None)
    second = build_report(job={**JOB, "job_uid": "b" * 32, "study_version": 2}, content=content, previous=first)
    assert second.status == "corrected" and second.replaces == first.uid and second.report_id == first.report_id
    msg = parse_both(build_oru(second, hl7_dest()).data, "latin_1")
    assert str(msg.segment("OBR")[25]) == "C" and {r[4] for r in rows(msg)} == {"C"}
    gone = retraction_of(second, "safety")
    assert gone.uid != second.uid and control_id(gone.uid) != control_id(second.uid)
    msg = parse_both(build_oru(gone, hl7_dest()).data, "latin_1")
    assert str(msg.segment("OBR")[25]) == "C" and {r[4] for r in rows(msg)} == {"W"}
    msg = parse_both(build_oru(gone, hl7_dest(retraction={"obr25": "X", "obx11": "D"})).data, "latin_1")
    assert str(msg.segment("OBR")[25]) == "X" and {r[4] for r in rows(msg)} == {"D"}
    assert str(msg.segment("ORC")[5]) == "CA"


def test_long_sentences_large_messages_and_character_sets(data: Path) -> None:
    from dicom_out.sr import GroundedFinding

    long = "The " + " ".join(f"word{i}|^&~" for i in range(120)) + " end."
    words = "a nodule in the right lower lobe, unchanged in size and density since the prior study"
    many = [GroundedFinding(long, ())] + [GroundedFinding(f"Finding {i}: nodule in segment {i} ≥ 5 mm, {words}.", ())
                                          for i in range(260)]
    made = reports.cxr_report(data, findings=many)
    report = build_report(job=JOB, content=read_results(made.results, made.source), previous=None)
    oru = build_oru(report, hl7_dest())
    assert len(oru.data) > 64 * 1024
    assert oru.charset == "UNICODE UTF-8"  # "≥" is not in ISO_IR 100: the whole message goes as UTF-8
    msg = parse_both(oru.data, "utf-8")
    first = rows(msg)[1]
    assert len(first[3]) > 1 and all(len(piece) <= 199 for piece in str(msg.segments("OBX")[1][5]).split("~"))
    assert " ".join(first[3]) == long
    assert rows(msg)[3][3] == [f"Finding 0: nodule in segment 0 ≥ 5 mm, {words}."]


def test_report_json_round_trip(data: Path) -> None:
    made = reports.ct_segmentation(data)
    report = build_report(job=JOB, content=read_results(made.results, made.source), previous=None,
                          created_at=time.time())
    from node.reports.model import Report

    assert Report.from_json(report.to_json()) == report
