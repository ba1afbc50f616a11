"""The pieces behind the real endpoints' behaviours, without a node process: the verdict by cause, the 3D mask's
affine kinds and prompt axis on the emulator's own variants, deployments and versions from a workspace, and the
version-keyed MedImageInsight caches."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel
import numpy as np
import pytest

from converters.volume import series_to_volume
from converters.volume_header import VolumeError
from converters.volume_mask import affine_kind, place_mask
from node.config import parse_config
from node.emulator.variants import check_variants, merged, parse_query
from node.flow import circuit
from node.invoke import deployments
from node.invoke.errors import EndpointError
from node.models.medimageparse.contract3d import read_reply
from node.models.medimageparse.emulator3d import MedImageParse3DHandler, threshold_mask, load_nifti
from node.models.versions import resolve

MR_DIR = "mr/prostate_adc_20slices"


# --- errors by cause -----------------------------------------------------------------------------------------------

def _svc(retries: int = 2) -> SimpleNamespace:
    cfg = parse_config({"endpoints": {"e": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score",
                                            "auth": "none", "model_error_retries": retries}}})
    return SimpleNamespace(cfg=cfg)


def _job(study: str, attempts: int = 1) -> dict:
    return {"endpoint": "e", "study_uid": study, "attempts": attempts}


def test_verdict_acts_on_the_cause_not_the_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(circuit, "_timeouts", {})
    svc = _svc()
    refused = EndpointError("x", status=424, permanent=True, model_status=400)
    failed = EndpointError("x", status=424, permanent=False, model_status=500)
    assert circuit.verdict(svc, _job("a"), refused) == "fail"
    assert circuit.verdict(svc, _job("a", 1), failed) == "retry-job"
    assert circuit.verdict(svc, _job("a", 3), failed) == "fail"  # 1 + model_error_retries tries spent
    for status in (429, 502, 503, 504, None):
        assert circuit.verdict(svc, _job("a"), EndpointError("x", status=status, permanent=False)) == "endpoint"
    assert circuit.verdict(svc, _job("a"), EndpointError("x", status=401, permanent=True)) == "fail"


def test_timeouts_of_several_studies_open_the_circuit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(circuit, "_timeouts", {})
    svc, timeout = _svc(), EndpointError("x", status=408, permanent=False)
    assert circuit.verdict(svc, _job("a"), timeout) == "retry-job"
    assert circuit.verdict(svc, _job("a", 2), timeout) == "retry-job"  # the same study again: still one input
    assert circuit.verdict(svc, _job("b"), timeout) == "retry-job"
    assert circuit.verdict(svc, _job("c"), timeout) == "endpoint"  # a third study: the endpoint is too slow
    assert circuit.verdict(svc, _job("c", 3), timeout) == "fail"  # but a job's own retries stay bounded
    assert circuit.timed_out_studies("e", "d", now=10**10) == 1  # outside the window: counting starts again


# --- MedImageParse 3D: the emulator's variants, read as the node reads them ----------------------------------------

@pytest.fixture(scope="module")
def mr(data: Path):
    volume = series_to_volume(sorted((data / MR_DIR).glob("*.dcm")))
    payload = {"columns": ["image", "text"], "index": [0],
               "data": [[base64.b64encode(volume.to_nifti_gz_bytes()).decode(), "prostate & lesion"]]}
    truth = threshold_mask(load_nifti(volume.to_nifti_gz_bytes()))
    return volume, payload, truth


@pytest.mark.parametrize("variant, kind, how, axis", [
    ("3d-input-affine", "input", "affine", "none"),
    ("3d-canonical", "reoriented", "affine", "none"),
    ("3d-no-affine", "none", "voxel order", "none"),
    ("3d-identity", "identity", "voxel order", "none"),
    ("3d-zooms-only", "zooms-only", "voxel order", "none"),
    ("3d-prompt-first", "none", "voxel order", "first"),
])
def test_each_3d_variant_is_recognised_and_placed(mr, variant: str, kind: str, how: str, axis: str) -> None:
    volume, payload, truth = mr
    body = MedImageParse3DHandler().score(payload, {"variants": {variant}})
    answer = read_reply(json.loads(json.dumps(body)))
    assert answer.prompt_axis == axis
    masks = answer.per_prompt(2)
    assert masks is not None and len(masks) == 2
    placed = [place_mask(m, answer.affine, answer.declared, volume) for m in masks]
    assert {(k, h) for _, k, h in placed} == {(kind, how)}
    stripes = ((np.arange(truth.shape[0]) // 8) % 2)[:, None, None]
    for n, (data, _, _) in enumerate(placed):
        expected = truth if axis == "first" else truth * (stripes == n)
        assert np.array_equal(data.astype(bool), expected.astype(bool)), (variant, n)


def test_a_prompt_axis_that_does_not_match_is_reported(mr) -> None:
    volume, payload, truth = mr
    one = read_reply(MedImageParse3DHandler().score(payload, {"variants": {"3d-one-prompt"}}))
    assert one.per_prompt(2) is None and one.per_prompt(1) is not None
    labels = read_reply(MedImageParse3DHandler().score(payload, {}))
    assert labels.labels() == [1, 2] and labels.per_prompt(3) is not None and labels.per_prompt(1) is not None
    assert read_reply(MedImageParse3DHandler().score(payload, {})).per_prompt(2) is not None
    over = nibabel.Nifti1Image((truth * 255).astype(np.uint8), volume.affine)  # 255: not a label of 2 prompts
    body = [{"nifti_file": json.dumps({"data": base64.b64encode(gzip.compress(over.to_bytes())).decode()})}]
    assert read_reply(body).per_prompt(2) is None
    stack = np.ascontiguousarray(truth[None].astype(np.uint8))  # a prompt axis of 1, no text_features to tell
    array = {"data": base64.b64encode(stack.tobytes()).decode(), "shape": list(stack.shape), "dtype": "uint8"}
    assert read_reply([{"image_features": json.dumps(array)}]).per_prompt(2) is None


def test_a_mask_without_affine_and_of_another_shape_cannot_be_placed(mr) -> None:
    volume, _, truth = mr
    assert affine_kind(truth.shape, None, False, volume) == "none"
    with pytest.raises(VolumeError, match="does not cover"):
        place_mask(truth[:, :, :-1], None, False, volume)
    with pytest.raises(VolumeError, match="its affine: mismatch"):
        shifted = volume.affine.copy()
        shifted[:3, 3] += 500
        place_mask(truth[:, :, :-1], shifted, True, volume)


def test_emulator_variant_names_are_checked() -> None:
    assert check_variants("no-version,3d-canonical") == ["3d-canonical", "no-version"]
    with pytest.raises(ValueError, match="unknown variant"):
        check_variants(["3d-sideways"])
    with pytest.raises(ValueError, match="exclude each other"):
        check_variants(["3d-canonical", "3d-identity"])
    assert parse_query("/m/score?variant=no-version&variant=3d-identity") == ("/m/score", ["3d-identity", "no-version"])
    assert merged(["3d-canonical", "no-version"], ["3d-identity"]) == {"3d-identity", "no-version"}
    with pytest.raises(ValueError, match="exclude each other"):
        check_variants("versioned,no-version")
    assert merged(["versioned", "3d-canonical"], ["no-version"]) == {"3d-canonical", "no-version"}


def test_endpoint_settings_are_checked_per_model() -> None:
    base = {"url": "http://127.0.0.1:1/score", "auth": "none"}
    with pytest.raises(Exception, match="scaling_factor applies to a medimageinsight endpoint only"):
        parse_config({"endpoints": {"e": {"model": "cxrreportgen", "scaling_factor": 4.5, **base}}})
    with pytest.raises(Exception, match="prompts_per_call applies to a medimageparse3d endpoint only"):
        parse_config({"endpoints": {"e": {"model": "medimageparse", "prompts_per_call": 3, **base}}})
    cfg = parse_config({"endpoints": {"e": {"model": "medimageparse3d", "prompts_per_call": 3, **base}}})
    assert cfg.endpoints["e"].prompts_per_call == 3


# --- deployments and versions --------------------------------------------------------------------------------------

class FakeWorkspace:
    """The two azure-ai-ml calls the node makes, answered as azure-ai-ml's entities look."""

    def __init__(self, traffic: dict[str, int], models: dict[str, str], auth_mode: str = "key") -> None:
        from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings

        self.calls = 0
        deps = [ManagedOnlineDeployment(name=n, endpoint_name="mii", model=m, instance_type="Standard_NC6s_v3",
                                        instance_count=2, request_settings=OnlineRequestSettings(
                                            request_timeout_ms=90000, max_concurrent_requests_per_instance=2))
                for n, m in models.items()]
        owner = self

        class Endpoints:
            def get(self, name: str):
                owner.calls += 1
                return SimpleNamespace(name=name, traffic=traffic, auth_mode=auth_mode)

        class Deployments:
            def list(self, endpoint_name: str):
                owner.calls += 1
                return iter(deps)

        self.online_endpoints, self.online_deployments = Endpoints(), Deployments()


def _ws_endpoint(**extra) -> object:
    return parse_config({"endpoints": {"mii": {"model": "medimageinsight", "auth": "entra", "subscription_id": "s",
                                               "resource_group": "g", "workspace": "w", "endpoint_name": "mii",
                                               **extra}}}).endpoints["mii"]


def test_versions_come_from_the_reply_the_workspace_the_config_in_that_order(monkeypatch) -> None:
    deployments.clear()
    ws = FakeWorkspace({"blue": 90, "green": 10},
                       {"blue": "azureml://registries/azureml/models/MedImageInsight/versions/6",
                        "green": "azureml:MedImageInsight:7"})
    cfg = _ws_endpoint(model_version="configured-5")
    found = deployments.lookup(cfg, ml_client=ws)
    assert found.deployments["blue"].model_version == "MedImageInsight:6"
    assert found.deployments["blue"].request_timeout_ms == 90000 and found.deployments["blue"].max_pending == 8
    assert deployments.lookup(cfg, ml_client=ws) is found and ws.calls == 2  # looked up once per process
    assert resolve("mii", cfg, "header-1")[0] == "header-1"
    assert resolve("mii", cfg, None, "green")[0] == "MedImageInsight:7"  # the deployment that answered
    assert resolve("mii", cfg, None, None)[0] == "configured-5"  # split traffic, nothing says which one answered
    pinned = _ws_endpoint(model_version="configured-5", deployment="blue")
    assert resolve("mii", pinned, None, None)[0] == "MedImageInsight:6"
    deployments.clear()
    broken = SimpleNamespace(online_endpoints=SimpleNamespace(get=lambda name: (_ for _ in ()).throw(OSError("x"))))
    assert deployments.lookup(cfg, ml_client=broken).error.startswith("OSError")
    assert resolve("mii", cfg)[0] == "configured-5"  # a failed lookup: the configured version
    deployments.clear()
    plain = parse_config({"endpoints": {"p": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score",
                                              "auth": "none", "deployment": "cxr-v1"}}}).endpoints["p"]
    assert resolve("p", plain) == ("cxr-v1", "endpoints.p.deployment (no version reported or configured)")
    assert deployments.model_asset("/subscriptions/x/resourceGroups/g/providers/Microsoft.MachineLearningServices/"
                                   "workspaces/w/models/mip3d/versions/3") == ("mip3d", "3")


@pytest.mark.engine
def test_a_new_model_version_starts_new_caches_and_never_mixes(data: Path, tmp_path: Path) -> None:
    """MedImageInsight behind a deployment that reports no version: the embeddings and the label-text cache are
    keyed by endpoints.<n>.model_version; after an update (a new version string) the label texts are asked again
    and both versions' rows stand apart."""
    from node.emulator.server import EmulatorServer
    from node.invoke.client import EndpointClient
    from node.models.base import JobContext
    from node.models.registry import pipeline_for
    from node.store.state import Store
    from support.studies import derive_cxr_study
    from support.testdb import database_url

    store = Store.open(database_url(tmp_path))
    files = derive_cxr_study(tmp_path / "study", data / "cxr/cr_pa_jpeg_baseline.dcm")
    labels = {"view": ["x-ray chest posteroanterior", "x-ray chest lateral"]}
    with EmulatorServer() as emulator:  # no version header, as the real service
        for version in ("MedImageInsight:6", "MedImageInsight:6", "MedImageInsight:7"):
            cfg = parse_config({"endpoints": {"m": {"model": "medimageinsight", "auth": "none",
                                                    "url": emulator.model_url("medimageinsight"),
                                                    "model_version": version}},
                                "rules": [{"name": "r", "endpoint": "m", "params": {"labels": labels}}]})
            before = len(emulator.requests)
            ctx = JobContext(job={"job_uid": "0123456789abcdef0123456789abcdef", "attempts": 1},
                             rule=cfg.rules[0], endpoint_name="m", endpoint=cfg.endpoints["m"],
                             client=EndpointClient("m", cfg.endpoints["m"]), instance_paths=files,
                             previous_results=lambda kind: None, store=store)
            out = pipeline_for("medimageinsight")(ctx)
            with store.engine.begin() as conn:
                for write in out.writes:
                    write(conn)
            texts_asked = sum(1 for r in emulator.requests[before:] for row in r["payload"] if "text" in row
                              and row["text"]["kind"] == "text" and row["text"]["chars"])
            assert texts_asked == (0 if version == "MedImageInsight:6" and before > 1 else 2), (version, texts_asked)
            sr = out.results[0][1]
            assert version in [i.SoftwareVersions for i in sr.ContributingEquipmentSequence]
    from sqlalchemy import text

    with store.engine.connect() as conn:
        emb = dict(conn.execute(text("SELECT model_version, COUNT(*) FROM embeddings GROUP BY model_version")).all())
        txt = dict(conn.execute(text("SELECT model_version, COUNT(*) FROM text_embeddings GROUP BY model_version")).all())
    assert emb == {"MedImageInsight:6": 1, "MedImageInsight:7": 1} and txt == {"MedImageInsight:6": 2,
                                                                              "MedImageInsight:7": 2}
