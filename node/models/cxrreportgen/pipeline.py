"""CXRReportGen: chest X-ray study -> grounded findings -> Comprehensive SR (TID 1500) + GSPS on the frontal."""

from __future__ import annotations

import logging

import pydicom

from converters.cxr import NoFrontalView, build_cxr_inputs
from converters.scrub import names_and_ids, scrub_request_text
from dicom_out.algorithm import AlgorithmInfo
from dicom_out.gsps import build_findings_gsps
from dicom_out.sr import GroundedFinding, build_findings_sr
from node.ops.failpoints import failpoint
from node.models.cxrreportgen.contract import build_request, denormalize_box, parse_response
from node.models.cxrreportgen.indication import choose_indication
from node.models.cxrreportgen.priors import prior_inputs
from node.models.cxrreportgen.params import CXRParams
from node.models.registry import params_for
from node.store.hl7 import order_matched

from node.models.base import JobContext, JobOutput
from node.models.sc_fallback import cxr_sc, wants_sc

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
GSPS_SERIES_NUMBER = 9902


def map_boxes(raw_boxes, image, reference: str) -> tuple[tuple[float, float, float, float], ...]:
    """Normalised model boxes -> PNG pixels (per ``box_reference``) -> source pixel coordinates."""
    out = []
    for box in raw_boxes:
        x0, y0, x1, y1 = denormalize_box(box, image.png_width, image.png_height, reference)
        sx0, sy0 = image.to_source(x0, y0)
        sx1, sy1 = image.to_source(x1, y1)
        out.append((sx0, sy0, sx1, sy1))
    return tuple(out)


def run(ctx: JobContext) -> JobOutput:
    """Convert the study's views, call the endpoint, and write the SR and the presentation state."""
    try:
        # zero-shot view labels of the study (a MedImageInsight rule's label set, "view" by default) are used
        # for images whose header gives no view
        params: CXRParams = params_for("cxrreportgen", ctx.rule.params)
        classified = ctx.classifications.get(params.view_label_set)
        inputs = build_cxr_inputs(ctx.instance_paths, max_side=params.max_side, classified=classified)
    except NoFrontalView as exc:
        return JobOutput(state="skipped", outcome=f"no frontal chest image: {exc}")
    failpoint("converted")
    sent = [pydicom.dcmread(p, stop_before_pixels=True) for p in (inputs.frontal_path, inputs.lateral_path) if p]
    prior = prior_inputs(ctx.prior_lookup, inputs.frontal_path, max_side=params.max_side,
                         allow_burned_in=params.allow_burned_in)
    indication = choose_indication(inputs.text.indication, sent[0], ctx.orders)  # the RIS's order first
    payload = build_request(
        frontal_png=inputs.frontal.png,
        lateral_png=inputs.lateral.png if inputs.lateral else None,
        prior_png=prior.png,
        indication=indication.text,
        technique=inputs.text.technique,
        comparison=inputs.text.comparison or prior.comparison,
        prior_report=prior.report,
    )
    # free text: no names, IDs, dates of the study's own header (nor the prior's names and IDs)
    payload = scrub_request_text(payload, [*sent, *(names_and_ids(ds) for ds in prior.evidence)])
    reply = ctx.client.score(payload, request_id=ctx.request_id)
    raw = parse_response(reply.body)
    findings = [GroundedFinding(text=f.text, boxes=map_boxes(f.boxes, inputs.frontal, ctx.endpoint.box_reference))
                for f in raw]
    algorithm = AlgorithmInfo(name="CXRReportGen",
                              version=ctx.model_version(reply),
                              emulated=reply.emulated)
    frontal = pydicom.dcmread(inputs.frontal_path, stop_before_pixels=True)
    evidence = [frontal]
    if inputs.lateral_path is not None:
        evidence.append(pydicom.dcmread(inputs.lateral_path, stop_before_pixels=True))
    sr = build_findings_sr(
        frontal=frontal, evidence=evidence, findings=findings, algorithm=algorithm,
        series_instance_uid=ctx.uid("sr-series"), sop_instance_uid=ctx.uid("sr"),
        series_number=SR_SERIES_NUMBER, predecessor=ctx.previous_results("sr"), other_evidence=prior.evidence)
    gsps = build_findings_gsps(
        frontal=frontal, findings=findings, algorithm=algorithm,
        series_instance_uid=ctx.uid("gsps-series"), sop_instance_uid=ctx.uid("gsps"),
        series_number=GSPS_SERIES_NUMBER)
    results = [("sr", sr), ("gsps", gsps)]
    if wants_sc(ctx):
        results += cxr_sc(ctx, inputs.frontal_path, findings, algorithm)
    n_boxes = sum(len(f.boxes) for f in findings)
    views = "frontal + lateral" if inputs.lateral else "frontal only"
    writes = [order_matched(indication.accession, str(frontal.StudyInstanceUID))] if indication.accession else []
    return JobOutput(state="done", outcome=f"{len(findings)} findings, {n_boxes} boxes ({views}){prior.note}; "
                     f"indication from {indication.source}", results=results,
                     endpoint_seconds=reply.elapsed_seconds, writes=writes)
