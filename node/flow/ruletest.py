"""The rule tester (`dicom-node rules test`): what the node would do with some DICOM files, without sending anything.

Files are grouped into studies and series as the SCP records them (one row per valid SOP Instance UID, a repeated
SOP Instance UID replaces the earlier file, missing or invalid Study/Series/SOP Instance UIDs are quarantined), the
rules are evaluated by the node's own :func:`node.flow.decide.plan_study`, a series a rule does not match is
explained by :func:`node.flow.decide.explain_mismatch`, the completion trigger that would decide the study is
replayed by :mod:`node.flow.expected` (the files' order taken as their arrival), and each job's inputs are chosen
by the same code the
job runs: the study checks and egress policy of :mod:`node.flow.run`, then the model's own selection
(:func:`converters.cxr.choose_views`, :func:`converters.volume_series.select_volume_series` through the 3D
pipeline, :func:`converters.parse2d.select_frames` through the 2D pipeline). No endpoint is called and no result
is written or sent: this module opens no connection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pydicom

from converters.cxr import choose_views
from converters.cxr_text import clinical_text
from converters.insight import skip_reason as insight_skip_reason
from converters.scrub import without_burned_in
from converters.volume_header import VolumeError
from node.config import CLASSIFIED_KEY, NodeConfig, RuleSection
from node.flow.decide import explain_mismatch, instance_matches, mixed_patients_reason, plan_study
from node.flow.expected import evaluate as expected_content
from node.models.cxrreportgen.indication import choose_indication
from node.models.params import RuleParamsError
from node.models.registry import params_for
from node.store.spool import is_valid_uid

RESULTS_BY_MODEL = {
    "cxrreportgen": "a TID 1500 SR of the findings and a GSPS with their boxes on the frontal image",
    "medimageinsight": "image embeddings in the node's database (and a classification SR when params.labels is set)",
    "medimageparse": "one SEG per source series (or multi-frame instance)",
    "medimageparse3d": "one SEG per volume",
}


@dataclass
class Instance:
    """One file the node would accept, with its header (pixel data not read)."""

    path: Path
    ds: pydicom.Dataset


@dataclass
class Scan:
    """The files read: accepted instances by study and series, and those the node would refuse."""

    studies: dict[str, dict[str, list[Instance]]] = field(default_factory=dict)
    refused: list[dict[str, str]] = field(default_factory=list)


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Every file named, and every file under the folders named (sorted, hidden files left out)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
        else:
            out.append(path)
    return out


def scan(paths: Iterable[Path]) -> Scan:
    """Read the headers of ``paths`` and group them as the SCP records them (see the module docstring)."""
    result = Scan()
    seen: dict[str, tuple[str, str]] = {}
    for path in dicom_files(paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - the SCP quarantines what it cannot parse, whatever the error
            result.refused.append({"path": str(path), "reason": f"not readable as DICOM ({type(exc).__name__})"})
            continue
        uids = {k: str(ds.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
        bad = [k for k, v in uids.items() if not is_valid_uid(v)]
        if bad:
            result.refused.append({"path": str(path), "reason": f"{bad[0]} is missing or not a valid UID "
                                   "(the node would quarantine it)"})
            continue
        study, series, sop = uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"]
        if sop in seen:  # a resend of an instance replaces the earlier one
            old_study, old_series = seen[sop]
            items = result.studies[old_study][old_series]
            items[:] = [i for i in items if str(i.ds.SOPInstanceUID) != sop]
        seen[sop] = (study, series)
        result.studies.setdefault(study, {}).setdefault(series, []).append(Instance(path, ds))
    for study in list(result.studies):
        result.studies[study] = {k: v for k, v in result.studies[study].items() if v}
    return result


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "\\".join(map(str, value)) if isinstance(value, (list, pydicom.multival.MultiValue)) else str(value or "")


def explain_series(rule: RuleSection, items: Sequence[Instance]) -> dict[str, Any]:
    """Whether ``rule`` matches this series and, if not, each key that failed with the values found."""
    header_match = [i for i in items if instance_matches(rule.match, i.ds)]
    out: dict[str, Any] = {"rule": rule.name, "matches": bool(header_match)}
    if header_match:
        out["matching_instances"] = len(header_match)
        if rule.match.get(CLASSIFIED_KEY):
            out["matches"] = "header keys match; waits for zero-shot labels"
            out["classified"] = rule.match[CLASSIFIED_KEY]
        return out
    failures: dict[tuple[str, str], int] = {}
    for item in items:
        why = explain_mismatch(rule.match, item.ds)
        if why is not None:
            key, _expected, found = why
            label = "absent or empty" if found is None else "\\".join(found)
            failures[(key, label)] = failures.get((key, label), 0) + 1
    out["failed"] = [{"key": key, "expected": rule.match[key], "found": found, "instances": n}
                     for (key, found), n in sorted(failures.items(), key=lambda kv: -kv[1])]
    return out


def _destinations(cfg: NodeConfig, names: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        dest = cfg.destinations.get(name)
        if dest is None:
            out.append({"destination": name, "problem": "not in destinations"})
        else:
            out.append({"destination": name, "type": dest.type, "ae_title": dest.ae_title, "host": dest.host,
                        "port": dest.port, "url": dest.url, "tls": dest.tls is not None, "results": list(dest.results)})
    return out


def _params(model: str, rule: RuleSection) -> tuple[Any, dict[str, Any]]:
    params = params_for(model, rule.params)
    return params, (params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params))


def _selection(model: str, params: Any, paths: list[Path], orders: Any = None) -> dict[str, Any]:
    """What the model's pipeline would take from ``paths``, by the pipeline's own selection code."""
    if model == "cxrreportgen":
        sel = choose_views(paths)
        reasons = dict(sel.reasons)
        out: dict[str, Any] = {
            "frontal": str(sel.frontal) if sel.frontal else None, "frontal_why": reasons.pop("frontal", None),
            "lateral": str(sel.lateral) if sel.lateral else None, "lateral_why": reasons.pop("lateral", None),
            "skipped": {k.removeprefix("skipped:"): v for k, v in reasons.items()}}
        if sel.frontal is None:
            out["outcome"] = "the job would be skipped: no frontal chest image"
        else:  # the indication the job would send, and its source (the RIS's order or the header)
            header = pydicom.dcmread(sel.frontal, stop_before_pixels=True)
            chosen = choose_indication(clinical_text(header).indication, header, orders)
            out["indication"] = {"source": chosen.source, "text": chosen.text, **({"note": chosen.note}
                                                                                  if chosen.note else {})}
        return out
    if model == "medimageparse3d":
        from node.models.medimageparse.pipeline3d import read_headers, volumes_wanted

        headers, problems = read_headers(paths)
        try:
            wanted, why = volumes_wanted(params, headers)
        except VolumeError as exc:
            return {"outcome": f"the job would fail: {exc}", "unreadable": problems}
        return {"volumes": [{"series_uid": uid, "slices": len(files)} for uid, files in wanted],
                "why": why, "unreadable": problems}
    if model == "medimageparse":
        from node.models.medimageparse.pipeline2d import frames_wanted

        wanted, notes = frames_wanted(params, paths)
        return {"frames": [{"path": str(p), "frame": f + 1, "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                            "instance_number": str(ds.get("InstanceNumber", ""))} for p, f, ds in wanted],
                "frames_param": params.frames, "notes": notes}
    if model == "medimageinsight":
        images, skipped = [], {}
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            why = insight_skip_reason(ds)
            if why is None:
                images.append(str(path))
            else:
                skipped[str(path)] = why
        return {"images": images, "skipped": skipped}
    return {}


def preview_job(cfg: NodeConfig, rule: RuleSection, instances: list[Instance], orders: Any = None) -> dict[str, Any]:
    """The job ``rule`` would get for these instances: checks, params, the images chosen, where results go."""
    endpoint = cfg.endpoints.get(rule.endpoint)
    job: dict[str, Any] = {"rule": rule.name, "endpoint": rule.endpoint,
                           "series": sorted({str(i.ds.SeriesInstanceUID) for i in instances}),
                           "instances": len(instances), "send_to": _destinations(cfg, rule.send_to)}
    if endpoint is None:
        job["outcome"] = f"the job would fail: endpoint {rule.endpoint!r} is not configured"
        return job
    job["model"] = endpoint.model
    job["results"] = RESULTS_BY_MODEL.get(endpoint.model, "")
    paths = [i.path for i in instances]
    mixed = mixed_patients_reason(paths)
    if mixed:
        job["outcome"] = f"the job would fail: {mixed}"
        return job
    paths, burned = without_burned_in(paths, rule.params)
    if burned:
        job["burned_in"] = burned
    if not paths:
        job["outcome"] = f"the job would be skipped: not sent: {burned}"
        return job
    try:
        params, job["params"] = _params(endpoint.model, rule)
    except RuleParamsError as exc:
        job["outcome"] = f"the job would fail: {exc}"
        return job
    try:
        job["selection"] = _selection(endpoint.model, params, paths, orders)
    except Exception as exc:  # noqa: BLE001 - a selection error is what the job would report: show it, go on
        job["selection"] = {"outcome": f"the job would fail: {type(exc).__name__}: {exc}"}
    return job


def completion_preview(cfg: NodeConfig, instances: list[Instance]) -> dict[str, Any]:
    """Which completion trigger would decide this study, and when, if its instances arrived in this order
    (:mod:`node.flow.completion`'s precedence; expected content replayed one instance at a time)."""
    node = cfg.node
    n = len(instances)
    out: dict[str, Any] = {"instances": n, "triggers": []}
    for key, name, what in (("accept_mpps", "mpps", "a COMPLETED MPPS listing these instances"),
                            ("accept_ian", "ian", "an IAN listing these instances")):
        if getattr(node, key):
            out["triggers"].append(f"{name}: {what} decides the study when the last of them is in (it holds the study "
                                   f"until then, at most {node.study_complete_max_wait_seconds:g} s after the last "
                                   "instance or message: max_wait)")
        else:
            out["triggers"].append(f"{name}: off (node.{key}: false)")
    fired = None
    expecting = any(r.complete_when is not None for r in cfg.rules)
    for k in range(1, n + 1 if expecting else 1):  # replayed one instance at a time (nothing to replay without)
        verdict = expected_content(cfg.rules, [i.ds for i in instances[:k]])
        if verdict.satisfied:
            fired = (k, verdict)
            break
    final = expected_content(cfg.rules, [i.ds for i in instances])
    quiet = f"timer: {node.study_complete_after_seconds:g} s after the last instance"
    if fired is not None:
        k, verdict = fired
        out["triggers"].append(f"expected: fires when instance {k} of {n} arrives ({instances[k - 1].path.name}), "
                               f"at once: {verdict.detail}")
        if k < n:
            out["warning"] = (f"{n - k} instance(s) after it would re-open the study: a second version, decided "
                              "again")
        out["would_fire"] = f"expected, at instance {k} of {n}"
    else:
        out["triggers"].append(f"expected: does not fire: {final.detail}")
        out["would_fire"] = quiet
    out["triggers"].append(quiet)
    if node.accept_mpps or node.accept_ian:
        out["would_fire"] = f"mpps / ian when the modality or PACS sends them; without them: {out['would_fire']}"
    return out


def _arrival_order(found: Scan, paths: Sequence[Path]) -> dict[str, list[Instance]]:
    """Each study's instances in the order of the files given (the order a sender would send them in)."""
    rank = {str(p): i for i, p in enumerate(dicom_files(paths))}
    return {study: sorted((i for items in series.values() for i in items), key=lambda i: rank.get(str(i.path), 0))
            for study, series in found.studies.items()}


def run_rule_test(cfg: NodeConfig, paths: Sequence[Path], orders: Any = None) -> dict[str, Any]:
    """The whole report for ``paths`` against ``cfg.rules`` (plain data; see the module docstring).

    ``orders``: accession number -> stored HL7 order (the node's database), for CXRReportGen's indication."""
    found = scan(paths)
    arrival = _arrival_order(found, paths)
    studies = []
    for study_uid, series in found.studies.items():
        headers = [i.ds for items in series.values() for i in items]
        plans = plan_study(cfg.rules, headers, ignore_classified=True)
        series_out = []
        for series_uid, items in series.items():
            first = items[0].ds
            series_out.append({
                "series_uid": series_uid, "modality": _text(first, "Modality"),
                "series_number": _text(first, "SeriesNumber"), "description": _text(first, "SeriesDescription"),
                "body_part": _text(first, "BodyPartExamined"), "instances": len(items),
                "rules": [explain_series(rule, items) for rule in cfg.rules]})
        jobs = []
        for plan in plans:
            instances = [i for uid in plan.series_uids for i in series[uid]]
            job = preview_job(cfg, plan.rule, instances, orders)
            if plan.rule.match.get(CLASSIFIED_KEY):
                job["waits_for"] = (f"zero-shot labels {plan.rule.match[CLASSIFIED_KEY]} (decided by the study's "
                                    "classification rules when the node runs; not evaluated here)")
            jobs.append(job)
        studies.append({"study_uid": study_uid, "series": series_out, "jobs": jobs,
                        "completion": completion_preview(cfg, arrival[study_uid])})
    return {"config": str(cfg.source_path or ""), "studies": studies, "refused": found.refused,
            "sent": "nothing: the rule tester calls no endpoint and sends no result"}

