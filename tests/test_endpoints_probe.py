"""``dicom-node probe`` against every emulator variant and against a 424, a 401 and a 408: the real command in its
own process, its JSON report checked against what the emulator was told to answer and what its request log saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from node.emulator.server import EmulatorServer

pytestmark = pytest.mark.slow

VARIANTS_3D = ("3d-input-affine", "3d-canonical", "3d-no-affine", "3d-identity", "3d-zooms-only", "3d-prompt-first",
               "3d-one-prompt")
AFFINE_WORDS = {"3d-input-affine": "the request's own affine", "3d-canonical": "a reorientation of the request grid",
                "3d-no-affine": "none: no usable affine", "3d-identity": "identity: no usable affine",
                "3d-zooms-only": "zooms-only: no usable affine", "3d-prompt-first": "none: no usable affine",
                "3d-one-prompt": "none: no usable affine"}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, EmulatorServer]]:
    out = {"plain": EmulatorServer().start(), "keyed": EmulatorServer(key="the-right-key").start(),
           "small": EmulatorServer(max_input_pixels=1000).start(), "slow": EmulatorServer().start()}
    out["slow"].script_faults([{"status": 408, "repeat": 50}])
    try:
        yield out
    finally:
        for server in out.values():
            server.stop()


def endpoints(s: dict[str, EmulatorServer]) -> dict[str, dict[str, Any]]:
    plain = s["plain"]
    eps: dict[str, dict[str, Any]] = {
        "cxr": {"model": "cxrreportgen", "url": plain.model_url("cxrreportgen")},  # no version: as Azure
        "cxr-versioned": {"model": "cxrreportgen", "url": plain.model_url("cxrreportgen", "versioned"),
                          "model_version": "CXRReportGen:9"},
        "cxr-configured": {"model": "cxrreportgen", "url": plain.model_url("cxrreportgen"),
                           "model_version": "CXRReportGen:9"},
        "insight": {"model": "medimageinsight", "url": plain.model_url("medimageinsight")},
        "insight-object": {"model": "medimageinsight", "url": plain.model_url("medimageinsight", "insight-object")},
        "insight-no-sf": {"model": "medimageinsight", "url": plain.model_url("medimageinsight", "no-scaling-factor"),
                          "scaling_factor": 4.516357},
        "insight-no-sf-labels": {"model": "medimageinsight",
                                 "url": plain.model_url("medimageinsight", "no-scaling-factor")},
        "parse": {"model": "medimageparse", "url": plain.model_url("medimageparse")},
        "refused-424": {"model": "cxrreportgen", "url": s["small"].model_url("cxrreportgen")},
        "wrong-key-401": {"model": "cxrreportgen", "url": s["keyed"].model_url("cxrreportgen"), "auth": "key",
                          "key_env": "PROBE_TEST_WRONG_KEY"},
        "timeout-408": {"model": "medimageparse3d", "url": s["slow"].model_url("medimageparse3d")},
    }
    for variant in VARIANTS_3D:
        eps[variant] = {"model": "medimageparse3d", "url": plain.model_url("medimageparse3d", variant)}
    for ep in eps.values():
        ep.setdefault("auth", "none")
    return eps


def probe(tmp: Path, s: dict[str, EmulatorServer], *args: str) -> subprocess.CompletedProcess[str]:
    cfg = {"node": {"storage_dir": str(tmp / "var")}, "endpoints": endpoints(s),
           "rules": [{"name": "views", "endpoint": "insight-no-sf-labels",
                      "params": {"labels": {"view": ["x-ray chest posteroanterior", "x-ray chest lateral"]}}}]}
    path = tmp / "probe.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "PROBE_TEST_WRONG_KEY": "not-the-key"}
    return subprocess.run([sys.executable, "-m", "node.cli", "probe", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=180, env=env)


def test_probe_reports_every_variant_and_every_error(servers: dict[str, EmulatorServer], tmp_path: Path) -> None:
    before = {k: len(v.requests) for k, v in servers.items()}
    run = probe(tmp_path, servers, "--json")
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-3000:]  # the three error endpoints and a rule
    reports = {r["endpoint"]: r for r in json.loads(run.stdout)}
    assert set(reports) == set(endpoints(servers))
    usable = {name for name, r in reports.items() if r["usable"]}
    assert usable == set(reports) - {"refused-424", "wrong-key-401", "timeout-408", "insight-no-sf-labels"}, {
        n: r["problems"] for n, r in reports.items()}

    # errors: the cause, the model's own status and reason, the advice
    refused = reports["refused-424"]
    assert (refused["status"], refused["error"]["cause"], refused["error"]["model_status"]) == (424, "model-input", 413)
    assert "larger than this model takes" in refused["error"]["message"]
    assert reports["wrong-key-401"]["status"] == 401 and reports["wrong-key-401"]["error"]["cause"] == "auth"
    assert "endpoints.wrong-key-401.auth" in reports["wrong-key-401"]["problems"][0]
    slow = reports["timeout-408"]
    assert slow["status"] == 408 and "request_timeout_ms" in slow["problems"][0]
    assert len(servers["slow"].requests) - before["slow"] == 1, "a 408 is not retried by the client"

    # the recognised shapes, as the emulator was told to answer
    assert reports["cxr"]["reply"]["shape"].startswith("rows, output as a JSON string")
    assert "centre-crop" in reports["cxr"]["reply"]["boxes"]
    assert reports["insight"]["reply"]["shape"].startswith("rows, one per input")
    assert reports["insight-object"]["reply"]["shape"].startswith("one object")
    assert reports["insight"]["reply"]["scaling"] == "scaling_factor 4.51636 in the reply"
    assert reports["insight-no-sf"]["reply"]["scaling"] == "no scaling_factor in the reply (asked for)"
    assert any("endpoints.insight-no-sf.scaling_factor 4.51636" in w for w in reports["insight-no-sf"]["node_will"])
    assert "rules ['views']" in reports["insight-no-sf-labels"]["problems"][0]
    assert "masks [2, 1024, 1024]" in reports["parse"]["reply"]["shape"]
    for variant in VARIANTS_3D:
        r = reports[variant]
        assert r["reply"]["affine"].startswith(AFFINE_WORDS[variant]), (variant, r["reply"])
        if variant == "3d-one-prompt":
            assert "does not match the 2 prompts sent" in r["reply"]["prompts"] and "single" in r["reply"]
        else:
            assert "one mask per prompt for 2 sent" in r["reply"]["prompts"], (variant, r["reply"])
    assert "prompt axis first" in reports["3d-prompt-first"]["reply"]["prompts"]

    # versions: the reply's header (the emulator's `versioned` variant; no real endpoint sends one), else the
    # configured one, else "unspecified" with a warning naming the key
    assert (reports["cxr-versioned"]["version"], reports["cxr-versioned"]["version_source"]) == (
        "cxrreportgen-emulator-1", "reply header")
    assert (reports["cxr-configured"]["version"],
            reports["cxr-configured"]["version_source"]) == ("CXRReportGen:9", "endpoints.cxr-configured.model_version")
    assert reports["cxr"]["version"] == "unspecified"
    assert any("endpoints.cxr.model_version" in w for w in reports["cxr"]["warnings"]), reports["cxr"]["warnings"]

    # what reached the endpoints: synthetic images only (PNG / NIfTI, no DICOM, no text chunks), one call per probe
    plain = servers["plain"].requests[before["plain"]:]
    assert len(plain) == len(usable) + 1 + 1  # + insight-no-sf-labels, + the one-prompt fallback call
    for entry in plain:
        for row in entry["payload"]:
            kinds = {d["kind"] for d in row.values()}
            assert kinds <= {"png", "nifti.gz", "text"}, kinds
            assert all(set(d.get("png_chunks", ["IHDR"])) <= {"IHDR", "IDAT", "IEND"} for d in row.values())


def test_probe_text_output_and_exit_zero(servers: dict[str, EmulatorServer], tmp_path: Path) -> None:
    run = probe(tmp_path, servers, "cxr", "3d-no-affine")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("verdict   OK") == 2
    assert "place each mask by voxel order" in run.stdout and "affine    none: no usable affine" in run.stdout
    unknown = probe(tmp_path, servers, "nope")
    assert unknown.returncode == 2 and "unknown endpoint" in unknown.stderr


def test_probe_reads_the_deployment_from_the_workspace(servers: dict[str, EmulatorServer]) -> None:
    """A workspace endpoint: timeout, concurrency and auth mode read with azure-ai-ml, checked against the config."""
    from node.config import parse_config
    from node.invoke import deployments
    from node.models.probe import probe_endpoint, render
    from test_endpoints_units import FakeWorkspace

    deployments.clear()
    cfg = parse_config({"endpoints": {"mii": {
        "model": "medimageinsight", "url": servers["plain"].model_url("medimageinsight"),
        "auth": "key", "key_env": "PATH", "max_concurrency": 16, "timeout_seconds": 60,
        "subscription_id": "s", "resource_group": "g", "workspace": "w", "endpoint_name": "mii"}}})
    ws = FakeWorkspace({"blue": 100}, {"blue": "azureml://registries/azureml/models/MedImageInsight/versions/6"},
                       auth_mode="aad_token")
    deployments.lookup(cfg.endpoints["mii"], ml_client=ws)
    try:
        report = probe_endpoint(cfg, "mii")
    finally:
        deployments.clear()
    text = render(report)
    assert report.version == "MedImageInsight:6" and report.version_source.startswith("workspace: deployment blue")
    assert report.deployment["request_timeout_ms"] == 90000 and report.deployment["max_pending"] == 8
    assert any("max_concurrency 16 is above what Azure queues (8" in w for w in report.warnings), report.warnings
    assert any("timeout_seconds 60 is shorter than the deployment's request_timeout_ms 90000" in w
               for w in report.warnings)
    assert not report.usable and "auth: entra" in report.problems[0]
    assert "request_timeout_ms 90000" in text and "NOT USABLE" in text
