"""The real endpoints' behaviours end to end: one ``dicom-node serve`` process, emulators answering in every variant
the real service uses, a real Orthanc as the PACS, studies sent with dcmtk's storescu.

* A poison study (an image larger than the model takes: 424 with the container's 413) fails in seconds with the
  model's reason (status, study page, metric label, audit event) while the ten good studies behind it are served
  with one model call each, counted in the emulator's request log; the circuit never opens.
* A 424 with an inner 5xx and a 408 are tried again for that job only (the 408 with an ALERT naming
  request_timeout_ms); model_error_retries bounds it.
* MedImageInsight in rows (default), object, and without scaling_factor (configured fallback, and a rule failing
  with the key named); versions from endpoints.<n>.model_version when the reply reports none.
* MedImageParse 3D in every reply variant: each SEG read back from Orthanc is checked voxel by voxel against the
  emulator's rule applied to the SOURCE pixels, and the calls per study against the emulator's log.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from support.dcmtk import assert_ok, storescu, transfer_syntax_flag
from support.nodekit import db_rows, wait_until
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.ports import free_port
from support.studies import copy_series, derive_cxr_study
from test_parse_pipelines import frames_by_source

pytestmark = [pytest.mark.slow, pytest.mark.engine]

POISON_PIXELS = 2_000_000  # the emulator refuses images larger than this: the 1955x1841 CR is, the 1024x1024 are not
CXR_VERSION = "CXRReportGen:registry-7"  # endpoints.cxr.model_version: the emulator reports none (as Azure)
LABELS = {"view": ["x-ray chest posteroanterior", "x-ray chest lateral"]}
VARIANTS_3D = ("3d-input-affine", "3d-canonical", "3d-no-affine", "3d-identity", "3d-zooms-only", "3d-prompt-first",
               "3d-one-prompt")
INSIGHT = {"mii-rows": ["versioned"], "mii-object": ["insight-object"], "mii-nosf": ["no-scaling-factor"],
           "mii-unset": ["no-scaling-factor"]}
PROMPTS = "prostate & lesion"


class Env:
    def __init__(self, tmp: Path, data: Path) -> None:
        from node.emulator.server import EmulatorServer

        self.tmp, self.data = tmp, data
        # the CXR endpoint's emulator: refuses images over POISON_PIXELS, reports no model version (as Azure)
        self.cxr_emulator = EmulatorServer(max_input_pixels=POISON_PIXELS).start()
        self.emulator = EmulatorServer().start()  # MedImageInsight and MedImageParse 3D, variants per URL
        self.pacs = Orthanc(tmp / "orthanc").start()
        cfg = node_config(tmp, endpoint_url=self.cxr_emulator.url, pacs=(self.pacs.aet, self.pacs.dicom_port),
                          quiet=1.0)
        cfg["http"] = {"host": "127.0.0.1", "port": free_port()}
        cfg["queue"] = {"workers": 4}
        cfg["endpoints"]["cxr"].update(model_version=CXR_VERSION, model_error_retries=2, retry_initial_seconds=0.5,
                                       retry_max_seconds=2, url=self.cxr_emulator.model_url("cxrreportgen"))
        cfg["rules"] = [{"name": "cxr", "match": {"StudyDescription": "E2E cxr"}, "endpoint": "cxr",
                         "send_to": ["pacs"]}]
        for name, variants in INSIGHT.items():
            cfg["endpoints"][name] = {"model": "medimageinsight", "auth": "none", "timeout_seconds": 60,
                                      "url": self.emulator.model_url("medimageinsight", *variants),
                                      "model_version": "MedImageInsight:emulated-1"}
            cfg["rules"].append({"name": name, "match": {"StudyDescription": f"E2E {name}"}, "endpoint": name,
                                 "params": {"labels": LABELS}, "send_to": ["pacs"]})
        cfg["endpoints"]["mii-nosf"]["scaling_factor"] = 4.516357
        cfg["endpoints"]["mii-rows"]["model_version"] = "ignored: the reply reports one"
        for variant in VARIANTS_3D:
            cfg["endpoints"][variant] = {"model": "medimageparse3d", "auth": "none", "timeout_seconds": 120,
                                         "url": self.emulator.model_url("medimageparse3d", variant),
                                         "model_version": "MedImageParse3D:emulated-1"}
            cfg["rules"].append({"name": variant, "match": {"StudyDescription": f"E2E {variant}"},
                                 "endpoint": variant, "send_to": ["pacs"],
                                 "params": {"prompt": PROMPTS, "series": "matched", "category": "other organ"}})
        self.node = NodeProcess(tmp, cfg)
        self.node.start()
        self.node.wait_worker_started()
        self.http = f"http://127.0.0.1:{cfg['http']['port']}"

    def stop(self) -> None:
        self.node.stop()
        self.pacs.stop()
        self.emulator.stop()
        self.cxr_emulator.stop()

    # --- studies -------------------------------------------------------------------------------------
    def cxr_study(self, label: str, frontal: str, description: str = "E2E cxr") -> list[Path]:
        files = derive_cxr_study(self.tmp / label, self.data / "cxr" / frontal, patient_id=f"E2E-{label}")
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyDescription = description
            ds.save_as(f, enforce_file_format=True)
        return files

    def mr_study(self, label: str, description: str) -> list[Path]:
        files = copy_series(sorted((self.data / "mr/prostate_adc_20slices").glob("*.dcm")), self.tmp / label,
                            patient_id=f"E2E-{label}", study_uid=generate_uid())
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyDescription = description
            ds.save_as(f, enforce_file_format=True)
        return files

    def send(self, files: list[Path]) -> str:
        assert_ok(storescu("127.0.0.1", self.node.port, files, extra=[transfer_syntax_flag(files[0])]))
        return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def jobs(self, study_uid: str) -> list[dict[str, Any]]:
        rows = db_rows(self.node, "SELECT state, outcome, attempts, created_at, updated_at, rule_name FROM jobs "
                                  "WHERE study_uid = ?", study_uid)
        return [dict(zip(("state", "outcome", "attempts", "created_at", "updated_at", "rule"), r)) for r in rows]

    def job_in(self, study_uid: str, states: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
        return wait_until(lambda: next((j for j in self.jobs(study_uid) if j["state"] in states), None), timeout,
                          f"a job of study {study_uid} in {states}:\n{self.node.logs()[-3000:]}")

    def pacs_by_study(self) -> dict[str, list[pydicom.Dataset]]:
        out: dict[str, list[pydicom.Dataset]] = {}
        for ds in self.pacs.datasets():
            out.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("endpoints-e2e"), data)
    try:
        yield e
    finally:
        e.stop()


def metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(base + "/metrics", timeout=30).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def software_versions(ds: pydicom.Dataset) -> list[str]:
    return [str(item.get("SoftwareVersions", "")) for item in ds.get("ContributingEquipmentSequence", [])]


# --- errors by cause -----------------------------------------------------------------------------------------------

def test_poison_study_fails_in_seconds_and_the_ten_behind_it_are_served(env: Env) -> None:
    from node.config import load_config
    from node.ops.audit import read_events

    before = len(env.cxr_emulator.requests)
    poison = env.cxr_study("poison", "cr_pa_mono1_uncompressed.dcm")  # 1955x1841: over the model's limit
    good = [env.cxr_study(f"good{i}", "cr_pa_jpeg_baseline.dcm" if i % 2 else "dx_frontal_no_viewposition.dcm")
            for i in range(10)]
    poison_uid = env.send(poison)
    good_uids = [env.send(files) for files in good]

    failed = env.job_in(poison_uid, ("failed",), 60)
    assert failed["updated_at"] - failed["created_at"] < 10, failed  # in seconds, not after a day of retries
    assert failed["attempts"] == 1, failed
    outcome = failed["outcome"]
    assert "the model refused this input" in outcome and "model status 413" in outcome, outcome
    assert "larger than this model takes" in outcome, outcome  # the model's own words

    wait_until(lambda: all(len(env.pacs_by_study().get(uid, [])) == 2 for uid in good_uids), 180,
               f"SR + GSPS of the ten good studies in Orthanc:\n{env.node.logs()[-3000:]}")
    requests = env.cxr_emulator.requests[before:]
    assert sorted(r["status"] for r in requests) == [200] * 10 + [424], [r["status"] for r in requests]
    for uid in good_uids:
        (job,) = env.jobs(uid)
        assert job["state"] == "done" and job["attempts"] == 1, job
    assert poison_uid not in env.pacs_by_study()
    assert "circuit open" not in env.node.logs() and "unavailable, its jobs wait" not in env.node.logs()

    # visible where an operator looks: status, the study page, a metric label, the audit trail
    assert "the model refused this input" in env.node.status()
    page = httpx.get(f"{env.http}/studies/{poison_uid}", timeout=30)
    assert page.status_code == 200 and "the model refused this input" in page.text
    assert metric(env.http, "dicom_node_model_errors_total", endpoint="cxr", cause="model-input", status="413",
                  action="failed") == 1
    audit = load_config(env.node.config_path).audit_path
    events = [e for e in read_events(audit) if e["event"] == "job-failed" and e.get("study_uid") == poison_uid]
    assert len(events) == 1 and "the model refused this input" in events[0]["reason"], events
    assert events[0]["cause"] == "model-input" and events[0]["model_status"] == 413

    # a reply without a version header: Algorithm Version is endpoints.cxr.model_version
    sr = next(ds for ds in env.pacs_by_study()[good_uids[0]] if ds.Modality == "SR")
    assert CXR_VERSION in software_versions(sr), software_versions(sr)


@pytest.mark.parametrize("fault, attempts, words", [
    ({"status": 424, "model_status": 503, "model_reason": "cuda_oom"}, 2, "model status 503"),
    ({"status": 408}, 2, "request_timeout_ms"),
])
def test_a_model_error_or_timeout_is_retried_for_that_job_only(env: Env, fault: dict, attempts: int,
                                                               words: str) -> None:
    env.cxr_emulator.script_faults([fault])
    uid = env.send(env.cxr_study(f"retry{fault['status']}", "cr_pa_jpeg_baseline.dcm"))
    wait_until(lambda: len(env.pacs_by_study().get(uid, [])) == 2, 90, f"study {uid} served after the retry")
    (job,) = env.jobs(uid)
    assert job["state"] == "done" and job["attempts"] == attempts, job
    logs = env.node.logs()
    assert words in logs and "unavailable, its jobs wait" not in logs
    if fault["status"] == 408:
        assert "ALERT: endpoint cxr: the model ran longer than the deployment's request_timeout_ms" in logs
    assert env.cxr_emulator.pending_faults == []


def test_model_errors_past_model_error_retries_fail_the_job(env: Env) -> None:
    env.cxr_emulator.script_faults([{"status": 424, "model_status": 500, "repeat": 3}])
    uid = env.send(env.cxr_study("spent", "cr_pa_jpeg_baseline.dcm"))
    job = env.job_in(uid, ("failed",), 90)
    assert job["attempts"] == 3 and "3 tries (model_error_retries 2)" in job["outcome"], job
    assert metric(env.http, "dicom_node_model_errors_total", endpoint="cxr", cause="model-error", status="500",
                  action="retried") == 2


# --- MedImageInsight -----------------------------------------------------------------------------------------------

def test_insight_rows_object_and_missing_scaling_factor(env: Env) -> None:
    uids = {name: env.send(env.cxr_study(name, "cr_pa_jpeg_baseline.dcm", f"E2E {name}")) for name in INSIGHT}
    failed = env.job_in(uids["mii-unset"], ("failed",), 90)
    assert "endpoints.mii-unset.scaling_factor" in failed["outcome"] and "4.516357" in failed["outcome"], failed
    served = [n for n in INSIGHT if n != "mii-unset"]
    for name in served:
        job = env.job_in(uids[name], ("done", "failed", "skipped"), 90)
        assert job["state"] == "done", (name, job)
    wait_until(lambda: all(env.pacs_by_study().get(uids[n]) for n in served), 120, "the classification SRs")
    # the same image through the three variants: the same vector (rows and object parsed alike) and, with the
    # configured scaling factor standing in for the missing one, the same label probabilities
    vectors = {n: db_rows(env.node, "SELECT vector FROM embeddings WHERE study_uid = ?", uids[n]) for n in served}
    arrays = {n: np.frombuffer(v[0][0], dtype=np.float32) for n, v in vectors.items()}
    assert all(np.allclose(arrays[n], arrays["mii-rows"], atol=1e-6) for n in served), "vectors differ by variant"
    probs = {n: db_rows(env.node, "SELECT label, probabilities FROM classifications WHERE study_uid = ?", uids[n])
             for n in served}
    assert probs["mii-nosf"] == probs["mii-rows"] == probs["mii-object"], probs
    sr = env.pacs_by_study()[uids["mii-rows"]][0]
    assert "medimageinsight-emulator-1" in software_versions(sr)  # the reply's header wins over the config
    rows = [r for r in env.emulator.requests if r["path"] == "/medimageinsight/score" and r["status"] == 200]
    assert {tuple(r["variants"]) for r in rows} >= {("versioned",), ("insight-object",), ("no-scaling-factor",)}


# --- MedImageParse 3D in every variant -----------------------------------------------------------------------------

def test_every_3d_reply_variant_lands_on_the_source_slices(env: Env, tmp_path: Path) -> None:
    before = len(env.emulator.requests)
    uids = {v: env.send(env.mr_study(v, f"E2E {v}")) for v in VARIANTS_3D}
    for variant, uid in uids.items():
        job = env.job_in(uid, ("done", "failed", "skipped"), 240)
        assert job["state"] == "done", (variant, job)
    wait_until(lambda: all(env.pacs_by_study().get(uids[v]) for v in VARIANTS_3D), 120,
               f"a SEG per variant in Orthanc:\n{env.node.logs()[-4000:]}")
    sources = [pydicom.dcmread(p) for p in sorted((env.data / "mr/prostate_adc_20slices").glob("*.dcm"))]
    pixels = {int(s.InstanceNumber): apply_modality_lut(s.pixel_array, s).astype(np.float64) for s in sources}
    median = float(np.median(np.concatenate([p.ravel() for p in pixels.values()])))
    stripes = [((np.arange(256) // 8) % 2) == n for n in (0, 1)]  # the emulator's label map for 2 prompts
    calls = {v: [r for r in env.emulator.requests[before:] if r["variants"] == [v]] for v in VARIANTS_3D}
    for variant, uid in uids.items():
        (seg_ds,) = env.pacs_by_study()[uid]
        path = tmp_path / f"{variant}.dcm"
        seg_ds.save_as(path, enforce_file_format=True)
        seg = hd.seg.segread(path)
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["prostate", "lesion"], variant
        by_number = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): int(
            pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in (env.tmp / variant).glob("*.dcm")}
        full = variant in ("3d-prompt-first", "3d-one-prompt")  # one whole mask per prompt, no label map
        for segment in (1, 2):
            frames = frames_by_source(seg, segment)
            assert len(frames) == 20, variant
            for (sop_uid, _), got in frames.items():
                expected = pixels[by_number[sop_uid]] > median
                if not full:
                    expected = expected & stripes[segment - 1][None, :]
                assert np.array_equal(got.astype(bool), expected), f"{variant}: segment {segment} misplaced"
        want = 3 if variant == "3d-one-prompt" else 1  # a prompt axis of 1: the joined call, then one per prompt
        assert len(calls[variant]) == want and all(r["status"] == 200 for r in calls[variant]), (variant, calls)
    logs = env.node.logs()
    for kind in ("none", "identity", "zooms-only"):
        assert f"has no usable affine ({kind}); placed by voxel order" in logs, kind
    assert "not one mask per prompt; asking one prompt per call" in logs
    assert os.path.exists(env.node.config_path)
